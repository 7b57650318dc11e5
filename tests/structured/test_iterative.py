import copy
import doctest

import pytest
import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.measure import count_macs
from prunekit.structured import iterative as iterative_module
from prunekit.structured import prune
from prunekit.structured.iterative import prune_iteratively, round_targets


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5)).eval()


X = (torch.randn(2, 3, 12, 12),)


def test_docstring_examples_run():
    assert doctest.testmod(iterative_module).failed == 0


def test_round_targets_multiply_to_the_total():
    t = round_targets(0.3, 4)
    assert len(t) == 4 and torch.tensor(t).prod().item() == pytest.approx(0.3)


def test_rounds_land_on_the_total_macs_and_train_between_cuts():
    model = _cnn()
    dense = count_macs(model, X)
    seen = []
    res = prune_iteratively(model, X, target_macs=0.3, rounds=3,
                            train=lambda m, k: seen.append((k, count_macs(m, X) / dense)))
    assert [k for k, _ in seen] == [0, 1, 2] and len(res) == 3
    shares = [s for _, s in seen]
    assert shares[0] > shares[1] > shares[2]
    assert abs(shares[0] - 0.3 ** (1 / 3)) < 0.03 and abs(shares[2] - 0.3) <= 0.02 * 0.3 + 1e-9
    assert model(*X).shape == (2, 5)


def test_zero_ratio_is_the_dense_model():
    model = _cnn()
    ref = model(*X)
    prune_iteratively(model, X, ratio=0.0, rounds=2, train=lambda m, k: None)
    assert torch.allclose(model(*X), ref, atol=1e-5, rtol=0)


def test_one_round_without_training_is_one_shot_pruning():
    a, b = _cnn(), _cnn()
    prune_iteratively(a, X, ratio=0.5, rounds=1, train=lambda m, k: None)
    prune(b, X, ratio=0.5)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_a_failing_round_puts_the_model_back():
    model = _cnn()
    before = copy.deepcopy(model.state_dict())
    ref = model(*X)

    def train(m, k):
        if k == 1:
            raise RuntimeError("out of memory in round 1")
    with pytest.raises(RuntimeError, match="round 1"):
        prune_iteratively(model, X, target_macs=0.4, rounds=3, train=train)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model[0].out_channels == 32 and torch.equal(model(*X), ref)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"), ({"ratio": 0.3, "target_macs": 0.5}, "exactly one"),
    ({"ratio": 0.3, "rounds": 0}, "rounds"), ({"target_macs": 1.5}, "target_macs"), ({"ratio": 1.0}, "ratio"),
])
def test_bad_arguments_raise_before_any_cut(kwargs, match):
    model = _cnn()
    with pytest.raises(PruningError, match=match):
        prune_iteratively(model, X, train=lambda m, k: None, **kwargs)
    assert model[0].out_channels == 32
