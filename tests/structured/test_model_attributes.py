"""After a cut, a timm model's width attributes are true: reset_classifier builds a head that fits."""
import pytest
import timm
import torch

import prunekit
from prunekit.structured.surgery import sync_model_attributes


@pytest.mark.parametrize("name,kw,size", [
    ("resnet18", {}, 32),
    ("vit_small_patch16_224", {"img_size": 32, "patch_size": 8}, 32),
    ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, 32),
    ("convnext_atto", {}, 32),
    ("efficientnet_b0", {}, 32),
])
def test_reset_classifier_after_pruning(name, kw, size):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, **kw).eval()
    x = torch.randn(2, 3, size, size)
    prunekit.prune(m, (x,), ratio=0.3)
    width = m.get_classifier().in_features
    assert m.num_features == width
    if hasattr(m, "cls_token"):
        assert m.embed_dim == m.cls_token.shape[-1]
    m.reset_classifier(5)
    assert m.get_classifier().in_features == width and m(x).shape == (2, 5)


def test_sync_reports_what_changed_and_leaves_true_attributes_alone():
    m = timm.create_model("resnet18", pretrained=False).eval()
    assert sync_model_attributes(m) == {}
    m.fc = torch.nn.Linear(300, 1000)
    assert sync_model_attributes(m) == {"num_features": (512, 300), "head_hidden_size": (512, 300)}
