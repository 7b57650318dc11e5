"""Rewritten width-free forwards: same outputs dense, working once pruned, picklable, reverted when wrong."""
import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

import prunekit
from prunekit.measure import count_macs
from prunekit.structured.rewrite import head_dim, rewritten, swap_rewritten, verify_swaps


class WideQuery(nn.Module):
    """Keeps ``C // self.num_heads`` in a variable while its ``q`` is twice as wide as the input: the
    head size read from ``q`` is wrong here, so the rewrite must be found out and reverted."""

    def __init__(self):
        super().__init__()
        self.num_heads = 2
        self.q = nn.Linear(4, 8)

    def forward(self, x):
        B, N, C = x.shape
        hd = C // self.num_heads
        return x.reshape(B, N, self.num_heads, hd).sum(2)


def _assert_identity_at_zero(model, x):
    with torch.no_grad():
        ref = model(x)
        prunekit.prune(model, (x,), ratio=0.0)
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def _tiny(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, img_size=32, patch_size=8, embed_dim=64, num_heads=4, depth=2,
                             num_classes=10, **kw).eval()


@pytest.mark.parametrize("name", ["beit_base_patch16_224", "eva02_tiny_patch14_224", "cait_xxs24_224"])
def test_rewritten_forward_equals_the_original(name):
    model = _tiny(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        swapped = swap_rewritten(model)
        assert swapped, f"{name}: no attention class was rewritten"
        assert all(type(m)._width_free_base is old for m, old in swapped)
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["beit_base_patch16_224", "eva02_tiny_patch14_224", "cait_xxs24_224"])
def test_heads_and_width_of_rewritten_attention_are_pruned(name):
    model = _tiny(name)
    x = torch.randn(2, 3, 32, 32)
    macs = count_macs(model, (x,))
    attn = [m for m in model.modules() if hasattr(m, "num_heads") and hasattr(m, "proj")][-1]  # CaiT: class attn
    heads = attn.num_heads
    res = prunekit.prune(model, (x,), ratio=0.3)
    assert attn.num_heads < heads, f"{name}: heads were not pruned ({attn.num_heads})"
    assert getattr(type(attn), "_width_free_base", None) is not None
    assert model(x).shape == (2, 10)
    assert count_macs(model, (x,)) < 0.85 * macs
    assert res.macs_after < res.macs_before


def test_identity_at_zero_ratio():
    model = _tiny("beit_base_patch16_224")
    x = torch.randn(2, 3, 32, 32)
    _assert_identity_at_zero(model, x)


def test_pruned_model_with_rewritten_class_saves_and_loads_in_a_fresh_process(tmp_path):
    model = _tiny("beit_base_patch16_224")
    x = torch.randn(1, 3, 32, 32)
    prunekit.prune(model, (x,), ratio=0.3)
    path = tmp_path / "beit.safetensors"
    prunekit.save(model, path)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x), tmp_path / "ref.pt")
    code = ("import torch, prunekit; m = prunekit.load(r'{p}').eval(); x = torch.load(r'{x}');"
            "torch.testing.assert_close(m(x), torch.load(r'{r}'), atol=1e-6, rtol=1e-6);"
            "print(type(m.blocks[0].attn).__name__)").format(p=path, x=tmp_path / "x.pt", r=tmp_path / "ref.pt")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "WF__timm__models__beit__Attention"


def test_a_rewrite_that_breaks_the_forward_is_reverted():
    model = nn.Sequential(WideQuery(), nn.Linear(2, 3))
    assert rewritten(WideQuery) is not None
    swapped = swap_rewritten(model)
    assert [old for _, old in swapped] == [WideQuery]
    x = torch.randn(2, 4, 4)
    kept = verify_swaps(model, swapped, lambda: model(x))
    assert kept == [] and type(model[0]) is WideQuery


def test_an_uncalled_module_is_reverted():
    model = nn.ModuleDict({"used": nn.Linear(4, 4), "unused": WideQuery()})
    swapped = swap_rewritten(model)
    assert verify_swaps(model, swapped, lambda: model["used"](torch.randn(1, 4))) == []
    assert type(model["unused"]) is WideQuery


def test_classes_without_the_idiom_are_not_rewritten():
    assert rewritten(nn.Linear) is None and rewritten(nn.MultiheadAttention) is None


@pytest.mark.parametrize("name", ["resnetblur18", "mixnet_s"])
def test_blur_pool_and_mixed_conv_follow_their_pruned_channels(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    macs = count_macs(model, (x,))
    prunekit.prune(model, (x,), ratio=0.3)
    assert model(x).shape == (1, 10)
    assert count_macs(model, (x,)) < 0.8 * macs


@pytest.mark.parametrize("name", ["pvt_v2_b0", "twins_svt_small"])
def test_spatial_reduction_attention_prunes_heads(name):
    """PVT-v2 / Twins: ``reshape(B, C, -1)`` after the reduction conv and a kv reshape that already infers -1."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    _assert_identity_at_zero(model, x)
    res = prunekit.prune(model, (x,), ratio=0.3)
    assert sum(d["unit"] == "heads" and d["kept"] < d["size"] for d in res.decisions) > 0
    assert model(x).shape == (1, 10) and res.macs_ratio < 0.8


def test_head_dim_is_read_from_the_projection():
    attn = timm.models.vision_transformer.Attention(32, num_heads=4)
    assert head_dim(attn, 32) == 8
    attn.qkv = nn.Linear(32, 3 * 4 * 6)  # as after pruning 2 of 8 positions per head
    assert head_dim(attn, 32) == 6


@pytest.mark.parametrize("name,kw", [("mvitv2_tiny", {"img_size": 64}), ("hiera_tiny_224", {"img_size": (64, 64)})])
def test_heads_merged_into_an_attribute_width_follow_pruning(name, kw):
    """MViTv2 / Hiera: ``x.transpose(1, 2).reshape(B, -1, self.dim_out)`` with a pruned inner width."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kw).eval()
    x = torch.randn(1, 3, 64, 64)
    _assert_identity_at_zero(model, x)
    res = prunekit.prune(model, (x,), ratio=0.3)
    assert model(x).shape == (1, 10) and res.macs_ratio < 0.8


def test_lambda_layer_maps_back_to_a_feature_map_of_its_own_width():
    """LambdaNet: ``out.reshape(B, C, H, W)`` with the input's C becomes ``reshape(B, -1, H, W)``."""
    from timm.layers.lambda_layer import LambdaLayer
    assert rewritten(LambdaLayer) is not None
    torch.manual_seed(0)
    layer = LambdaLayer(32, 32, feat_size=8, num_heads=4, dim_head=8)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), layer, nn.Conv2d(32, 10, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    _assert_identity_at_zero(model, x)
    res = prunekit.prune(model, (x,), ratio=0.3)
    assert model(x).shape == (2, 10, 8, 8) and res.macs_ratio < 0.95
    assert layer.qkv.in_channels < 32  # input width pruned: the original reshape(B, C, H, W) would fail
    assert type(layer).__name__ == "WF__timm__layers__lambda_layer__LambdaLayer"


def test_outlook_attention_folds_back_a_map_of_its_own_width():
    """VOLO: ``x.reshape(B, C * k * k, h * w)`` before ``fold`` with the input's C becomes ``reshape(B, -1, h * w)``."""
    from timm.models.volo import VOLO, OutlookAttention

    from prunekit.structured.rewrite import _rewrite_source
    assert rewritten(OutlookAttention) is not None
    assert _rewrite_source("x.reshape(B, C * self.kernel_size * self.kernel_size, h * w)") == "x.reshape(B, -1, h * w)"
    torch.manual_seed(0)
    model = VOLO(layers=(1, 1, 1, 1), img_size=64, embed_dims=(32, 64, 64, 64), num_heads=(2, 4, 4, 4),
                 num_classes=10, stem_hidden_dim=16).eval()
    x = torch.randn(1, 3, 64, 64)
    _assert_identity_at_zero(model, x)
    res = prunekit.prune(model, (x,), ratio=0.3)
    assert model(x).shape == (1, 10) and res.macs_ratio < 0.8
    outlookers = [m for m in model.modules() if isinstance(m, OutlookAttention)]
    assert outlookers and all(type(m).__name__.startswith("WF__") for m in outlookers)
    assert all(m.v.weight.shape != (32, 32) for m in outlookers)  # the original reshapes would fail
