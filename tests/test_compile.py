"""torch.compile: every model prunekit produces traces into one graph (no graph breaks), checked with
torch._dynamo.explain, and the compiled graph gives the eager outputs."""
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import prunekit
from prunekit import tokens
from prunekit.tokens import DynamicViT
from prunekit.zoo.models import build

KW = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=10)  # 64 patches + class


def _vit():
    torch.manual_seed(0)
    return VisionTransformer(**KW).eval(), (torch.randn(2, 3, 32, 32),)


def _pruned_cnn():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    x = (torch.randn(2, 3, 16, 16),)
    prunekit.prune(net, x, ratio=0.5)
    return net, x


def _merged(kind):
    def make():
        model, x = _vit()
        if kind == "tome":
            tokens.merge(model, r=8)
        elif kind == "drop":
            tokens.drop(model, r=8)
        else:
            tokens.merge_dense(model, windows=6, r=2, example_inputs=x)
        return model, x
    return make


def _dynamic():
    vit, x = _vit()
    return DynamicViT(vit, stages=(1, 3), keep=0.7).eval(), x


def _video():
    torch.manual_seed(0)
    model = build("motion-vivit").eval()
    tokens.merge_video(model, tubes=20, r=4)
    return model, (torch.randn(1, 1, 8, 56, 56),)


@pytest.mark.parametrize("make", [_pruned_cnn, _merged("tome"), _merged("drop"), _merged("dense"), _dynamic, _video],
                         ids=["structured", "tome", "topk-drop", "merge_dense", "dynamic_vit", "merge_video"])
def test_prunekit_models_compile_without_graph_breaks(make):
    model, x = make()
    torch._dynamo.reset()
    with torch.no_grad():
        want = model(*x)
        explained = torch._dynamo.explain(model)(*x)
        assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
        assert explained.graph_count == 1
        got = torch.compile(model, backend="eager")(*x)  # dynamo's graph, run op by op: same ops, same numbers
    torch._dynamo.reset()
    assert torch.equal(got, want)
