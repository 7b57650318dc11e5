"""Training recipes: distillation from precomputed teacher logits matches distilling on the fly."""
import torch
from torch import nn

from prunekit.data import load_fashion_mnist, normalize
from prunekit.zoo import models
from prunekit.zoo.train import _loader, _teacher, fit, teacher_logits


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def test_teacher_logits_are_fmnist_resnet_on_normalised_images():
    x, _ = load_fashion_mnist("test")
    x = x[:40]
    with torch.no_grad():
        expected = _teacher()(normalize(x))
    got = teacher_logits(x)
    assert got.shape == (40, 10)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_precomputed_logits_train_exactly_like_the_live_teacher():
    x, y = load_fashion_mnist("train")
    x, y = x[:256], y[:256]
    live, offline = _tiny(), _tiny()
    fit(live, _loader(x, y, 64, False), 1, 1e-3, 4, teacher=_teacher(), label_smoothing=0.0)
    fit(offline, _loader(x, y, 64, False, soft=teacher_logits(x)), 1, 1e-3, 4, label_smoothing=0.0)
    for a, b in zip(live.parameters(), offline.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    plain = _tiny()
    fit(plain, _loader(x, y, 64, False), 1, 1e-3, 4, label_smoothing=0.0)
    assert not torch.allclose(plain[1].weight, offline[1].weight), "the distillation term changed nothing"


def test_soft_loader_yields_the_logits_of_the_sampled_rows():
    x, y = torch.rand(20, 1, 28, 28), torch.arange(20) % 10
    soft = torch.arange(20.0)[:, None].repeat(1, 10)
    for xb, yb, tb in _loader(x, y, 5, True, soft=soft)(torch.Generator().manual_seed(0)):
        assert xb.shape == (5, 1, 28, 28)
        assert torch.equal(tb[:, 0].long() % 10, yb)


def test_quick_vit_recipe_gives_a_196_token_model():
    from prunekit.zoo.train import recipe_vit
    model, route = recipe_vit(0, quick=True)
    assert model.patch_embed.num_patches == 196 and len(model.blocks) == 12
    assert "49 tokens" in route and "distilled" in route
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert type(model) is type(models.build_vit(2))
