"""One vocabulary: ``criterion=`` everywhere; the old names work for one release with a DeprecationWarning."""
import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import PruningError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


def test_prune_importance_is_the_old_name_of_criterion():
    x = (torch.randn(2, 8),)
    new, old = _net(), _net()
    prunekit.prune(new, x, ratio=0.5, criterion="l1", scope="local")
    with pytest.warns(DeprecationWarning, match="importance= is deprecated, use criterion="):
        prunekit.prune(old, x, ratio=0.5, importance="l1", scope="local")
    assert torch.equal(new[0].weight, old[0].weight)
    net = _net()
    with pytest.raises(PruningError, match="give criterion= only"):
        prunekit.prune(net, x, ratio=0.5, criterion="l1", importance="l2")
    assert net[0].out_features == 32


def test_sparsify_and_gradual_method_is_the_old_name_of_criterion():
    a, b = _net(), _net()
    prunekit.sparsify(a, 0.5, criterion="random", seed=1)
    with pytest.warns(DeprecationWarning, match="method= is deprecated"):
        prunekit.sparsify(b, 0.5, method="random", seed=1)
    assert torch.equal(a[0].weight_mask if hasattr(a[0], "weight_mask") else a[0].weight,
                       b[0].weight_mask if hasattr(b[0], "weight_mask") else b[0].weight)
    with pytest.warns(DeprecationWarning):
        prunekit.GradualPruner(copy.deepcopy(a), 0.5, end_step=2, method="magnitude")


def test_drop_layers_importance_is_the_old_name_of_criterion():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 3)
    with pytest.warns(DeprecationWarning):
        res = prunekit.drop_layers(enc, n=1, importance="last")
    assert res.removed_paths == ["layers.2"]


def test_every_result_object_has_a_json_able_as_dict():
    import json
    x = (torch.randn(2, 8),)
    pruned = prunekit.prune(_net(), x, ratio=0.5).as_dict()
    assert pruned["macs_ratio"] < 1 and pruned["params_after"] < pruned["params_before"]
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 3)
    dropped = prunekit.drop_layers(enc, n=1, criterion="last").as_dict()
    sparse = prunekit.sparsify(_net(), 0.5).as_dict()
    for doc in (pruned, dropped, sparse):
        json.dumps(doc)
    assert dropped["removed_paths"] == ["layers.2"] and sparse["total"] == pytest.approx(0.5, abs=0.01)


def test_sparsify_scope_layer_is_the_old_name_of_local():
    a, b = _net(), _net()
    ra = prunekit.sparsify(a, 0.5, scope="local")
    with pytest.warns(DeprecationWarning, match="scope='layer' is deprecated"):
        rb = prunekit.sparsify(b, 0.5, scope="layer")
    assert ra.layers == rb.layers and rb.scope == "local"
