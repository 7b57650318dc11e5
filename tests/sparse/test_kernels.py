import pytest
import torch
from torch import nn

import prunekit
from prunekit.sparse import SparseLinear


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 3)).eval()


@pytest.mark.parametrize("kernel", ["csr", "bsr"])
def test_forced_kernel_matches_dense(kernel):
    model = _model()
    pattern = "block:16x16" if kernel == "bsr" else "unstructured"
    prunekit.sparsify(model, 0.8, pattern=pattern, scope="local")
    x = torch.randn(5, 7, 64)
    prunekit.finalize(model)
    ref = model(x)
    plan = prunekit.finalize(model, kernels=kernel)
    assert set(plan) == {"0", "2"} and all(p["kernel"] == kernel for p in plan.values())
    assert isinstance(model[0], SparseLinear) and isinstance(model[4], nn.Linear)  # output layer stays
    assert model[0].weight.layout == {"csr": torch.sparse_csr, "bsr": torch.sparse_bsr}[kernel]
    assert torch.allclose(model(x), ref, atol=1e-5)
    rep = prunekit.sparsity_report(model)
    assert rep.layers["0"]["sparsity"] == pytest.approx(0.8, abs=0.02)


def test_auto_picks_per_layer_and_keeps_outputs():
    model = _model()
    prunekit.sparsify(model, 0.98)
    x = torch.randn(256, 64)
    ref = model(x)
    plan = prunekit.finalize(model, kernels="auto", example_inputs=(x,))
    assert set(plan) == {"0", "2"}
    for name, p in plan.items():
        assert p["kernel"] in ("dense", "csr", "bsr") and p["dense_ms"] > 0
        chosen = model.get_submodule(name)
        assert isinstance(chosen, SparseLinear) == (p["kernel"] != "dense")
        if p["kernel"] != "dense":  # chosen only when measured faster
            assert p[f"{p['kernel']}_ms"] * 1.05 < p["dense_ms"]
    assert torch.allclose(model(x), ref, atol=1e-4)


def test_dense_layers_below_min_sparsity_untouched():
    model = _model()
    plan = prunekit.finalize(model, kernels="csr")
    assert plan == {} and all(type(m) is not SparseLinear for m in model.modules())


def test_unknown_kernel_rejected():
    with pytest.raises(prunekit.PruningError, match="unknown kernels"):
        prunekit.finalize(_model(), kernels="cusparse")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 semi-structured kernels need CUDA")
def test_semi_structured_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 8)).half().cuda().eval()
    prunekit.sparsify(model, 0.5, pattern="2:4")
    x = torch.randn(128, 256, device="cuda", dtype=torch.half)
    prunekit.finalize(model)
    ref = model(x)
    prunekit.finalize(model, kernels="semi")
    assert isinstance(model[0], SparseLinear)
    assert torch.allclose(model(x), ref, atol=1e-2, rtol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 semi-structured kernels need CUDA")
def test_auto_on_cuda_times_semi_and_keeps_the_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 8)).half().cuda().eval()
    prunekit.sparsify(model, 0.5, pattern="2:4")
    x = torch.randn(4096, 1024, device="cuda", dtype=torch.half)
    prunekit.finalize(model)
    ref = model(x)
    plan = prunekit.finalize(model, kernels="auto", example_inputs=(x,))
    assert set(plan) == {"0"} and "semi_ms" in plan["0"]  # semi was timed against dense
    assert (type(model[0]) is SparseLinear) == (plan["0"]["kernel"] == "semi")
    assert torch.allclose(model(x), ref, atol=1e-2, rtol=1e-2)


def test_semi_on_cpu_is_refused_before_anything_changes():
    model = _model()
    prunekit.sparsify(model, 0.5, pattern="2:4")
    with pytest.raises(prunekit.PruningError, match="CUDA"):
        prunekit.finalize(model, kernels="semi")
    assert prunekit.sparse.is_masked(model[0]) and type(model[0]) is nn.Linear
