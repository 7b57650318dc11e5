"""Property tests: sparsify on random layer shapes keeps its promises."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit
from prunekit.errors import PruningError


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=4), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8)]),
       method=st.sampled_from(["magnitude", "random", "wanda"]), seed=st.integers(0, 1000))
def test_nm_groups_valid_or_error_without_change(widths, nm, method, seed):
    n, m = nm
    torch.manual_seed(seed)
    dims = [w * 4 for w in widths]  # multiples of 4: divisible by M only sometimes (M=8)
    layers = [nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)] + [nn.Linear(dims[-1], 3)]
    model = nn.Sequential(*layers)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = torch.randn(8, dims[0])
    try:
        res = prunekit.sparsify(model, None, pattern=f"{n}:{m}", criterion=method, calib=calib)
    except PruningError as e:
        assert f"M={m}" in str(e)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert not any(prunekit.sparse.is_masked(mod) for mod in model.modules())
        return
    assert abs(res.total - (1 - n / m)) < 1e-9
    for layer in layers[:-1]:
        assert int(layer.weight.reshape(-1, m).ne(0).sum(1).max()) <= n
    assert layers[-1].weight.ne(0).all()


@settings(max_examples=25, deadline=None)
@given(sparsity=st.floats(0.0, 0.99), scope=st.sampled_from(["global", "local"]), seed=st.integers(0, 1000))
def test_unstructured_sparsity_achieved(sparsity, scope, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 30), nn.Linear(30, 10), nn.Linear(10, 2))
    res = prunekit.sparsify(model, sparsity, scope=scope)
    zeros = sum(int((model[i].weight == 0).sum()) for i in (0, 1))
    assert zeros == res.pruned
    assert abs(res.total - sparsity) <= 1.0 / 600 + 1e-9
