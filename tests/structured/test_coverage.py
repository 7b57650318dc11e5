"""Every model the issue lists prunes at ratio=0.3: forward intact, same output shape, MACs <= 0.8x,
MACs before and after equal to counting them afresh.

Inputs are small (64 px where the architecture allows; ViTs built with ``img_size=64``) to keep the
suite fast; the pruning problem (groups, heads, attributes) is the same at any resolution.
"""
from __future__ import annotations

import pytest
import torch

import prunekit
from prunekit.measure import count_macs, run_model
from prunekit.structured.trace import flat_tensors as _tensors

from .helpers import HF_BUILDERS

TIMM = {  # name -> create_model kwargs, input size
    "resnet18": ({}, 64), "resnet50": ({}, 64), "resnext50_32x4d": ({}, 64), "mobilenetv2_100": ({}, 64),
    "mobilenetv3_small_100": ({}, 64), "efficientnet_b0": ({}, 64), "convnext_atto": ({}, 64),
    "regnetx_002": ({}, 64), "densenet121": ({}, 64), "vgg11_bn": ({}, 64),
    "vit_tiny_patch16_224": ({"img_size": 64}, 64), "deit_tiny_distilled_patch16_224": ({"img_size": 64}, 64),
    "deit3_small_patch16_224": ({"img_size": 64}, 64),
    "swin_tiny_patch4_window7_224": ({"img_size": 128, "window_size": 4}, 128),
    "mixer_s16_224": ({"img_size": 64}, 64),
}


# Known shortfalls, kept visible: the forward stays intact but MACs stay above 0.8x.
KNOWN_WEAK = {
}


def _weak(names):
    return [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_WEAK[n], strict=True)) if n in KNOWN_WEAK else n
            for n in names]


def _timm_test_models() -> list[str]:
    import timm
    return sorted(timm.list_models("test_*"))


def check(model: torch.nn.Module, inputs, ratio: float = 0.3) -> prunekit.structured.PruneResult:
    model.eval()
    with torch.no_grad():
        ref = [t.shape for t in _tensors(run_model(model, inputs))]
    macs = count_macs(model, inputs)
    res = prunekit.prune(model, inputs, ratio=ratio)
    with torch.no_grad():
        out = _tensors(run_model(model, inputs))
    assert [t.shape for t in out] == ref
    # prune() counts MACs on passes it runs anyway (or from its trace): the same numbers as counting afresh
    assert (res.macs_before, res.macs_after) == (macs, count_macs(model, inputs))
    assert all(torch.isfinite(t.float()).all() for t in out)
    assert res.macs_after <= 0.8 * res.macs_before, res.macs_ratio
    return res


@pytest.mark.parametrize("name", _weak(list(TIMM) + _timm_test_models()))
def test_timm(name):
    import timm
    kw, size = TIMM.get(name, ({}, None))
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kw)
    size = size or model.pretrained_cfg["input_size"][-1]
    check(model, (torch.randn(1, 3, size, size),))


def _torchvision(name: str):
    import torchvision
    tv = torchvision.models
    if name == "vit_b_16":  # vit_b_16's architecture at 64 px
        return tv.VisionTransformer(image_size=64, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
                                    mlp_dim=3072), 64
    if name == "googlenet":
        return tv.googlenet(weights=None, aux_logits=False, init_weights=False), 64
    if name == "swin_t":
        return tv.swin_t(weights=None), 64
    return getattr(tv, name)(weights=None), 64


@pytest.mark.parametrize("name", _weak(["resnet18", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5",
                                        "squeezenet1_0", "googlenet", "vit_b_16", "swin_t"]))
def test_torchvision(name):
    torch.manual_seed(0)
    model, size = _torchvision(name)
    check(model, (torch.randn(1, 3, size, size),))


@pytest.mark.parametrize("name", list(HF_BUILDERS))
def test_huggingface(name):
    model, inputs = HF_BUILDERS[name]()
    check(model, inputs)
