"""One ``ignore`` matcher for prune and sparsify: paths, patterns, parameters, modules, classes; typos refused."""
import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import PruningError
from prunekit.select import ignored_modules, ignored_params


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 16), nn.ReLU()), nn.Linear(16, 2))


def test_every_entry_form_names_the_same_kind_of_thing():
    net = _net()
    assert sorted(ignored_modules(net, "2")) == ["2", "2.0", "2.1"]  # a path covers what is inside it
    assert sorted(ignored_modules(net, ["2.*"])) == ["2.0", "2.1"]  # a pattern over paths
    assert sorted(ignored_modules(net, [nn.ReLU])) == ["1", "2.1"]
    assert sorted(ignored_modules(net, [net[0]])) == ["0"]
    assert ignored_params(net, ["0.bias"]) == ["0.bias"]  # a parameter by name
    assert ignored_params(net, ["2"]) == ["2.0.weight", "2.0.bias"]


@pytest.mark.parametrize("call", ["prune", "sparsify"])
def test_a_typo_is_refused_with_close_names_and_the_model_is_unchanged(call):
    net = _net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(PruningError, match=r"ignore='2\.O': .*close names: \[.*'2\.0'"):
        if call == "prune":
            prunekit.prune(net, (torch.randn(2, 8),), ratio=0.5, ignore=["2.O"])
        else:
            prunekit.sparsify(net, 0.5, ignore=["2.O"])
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_prune_and_sparsify_read_a_pattern_the_same_way():
    free, kept = _net(), _net()
    prunekit.prune(free, (torch.randn(2, 8),), ratio=0.5, scope="local")
    prunekit.prune(kept, (torch.randn(2, 8),), ratio=0.5, scope="local", ignore=["2.*"])
    assert free[2][0].weight.shape == (8, 8)
    assert kept[2][0].weight.shape == (16, 16) and kept[0].out_features == 16  # 2.0's dims stay, both sides
    sparse = _net()
    res = prunekit.sparsify(sparse, 0.5, ignore=["2.*"])
    assert "2.0" not in res.layers and "0" in res.layers
