import copy

import pytest
import torch

import prunekit
from prunekit.zoo import build
from prunekit.zoo.finetune import finetune


@pytest.mark.parametrize("distill", [False, True])
def test_finetune_runs_the_requested_steps_and_keeps_the_pruned_shape(distill):
    torch.manual_seed(0)
    model = build("fmnist-resnet")
    dense = copy.deepcopy(model).eval()
    x = torch.randn(2, 1, 28, 28)
    prunekit.prune(model, (x,), ratio=0.5)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    before = copy.deepcopy(model.state_dict())
    info = finetune(model, "fmnist-resnet", epochs=1, samples=256, batch=64, teacher=dense if distill else None)
    assert info["steps"] == 4 and info["train_samples"] == 256 and info["distilled"] is distill
    assert not model.training
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it trained
    assert model(x).shape == (2, 10)


def test_finetune_rejects_models_without_a_recipe():
    with pytest.raises(prunekit.PruningError, match="no built-in fine-tune recipe"):
        finetune(build("fmnist-resnet"), "minilm")


def test_distillation_is_a_different_objective():
    """Same seed, same data: with a teacher the weights end up elsewhere."""
    outs = []
    for teacher in (None, build("fmnist-resnet").eval()):
        torch.manual_seed(0)
        m = build("fmnist-resnet")
        finetune(m, "fmnist-resnet", epochs=1, samples=128, batch=64, teacher=teacher)
        outs.append(m.fc.weight.detach().clone())
    assert not torch.allclose(outs[0], outs[1])
