"""Fuzzing: on random architectures, prune and sparsify succeed with a model that runs, keeps its output
shape and has the MACs it reports, or raise PruningError with the model bit-identical to before."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunekit
from prunekit.errors import PruningError
from prunekit.measure import count_macs

from .fuzz_arch import FuzzNet, architectures

X = torch.randn(2, 3, 8, 8)
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _apply_or_refused(model, fn):
    """``(result, ref, out)`` after ``fn(model)``, or ``None`` when it raised PruningError and left the model
    bit-identical (asserted)."""
    with torch.no_grad():
        ref = model(X)
        before = _state(model)
        try:
            res = fn(model)
        except PruningError:
            after = model.state_dict()
            assert after.keys() == before.keys()
            assert all(torch.equal(after[k], before[k]) for k in before)
            assert torch.equal(model(X), ref)
            return None
        return res, ref, model(X)


@SETTINGS
@given(spec=architectures(), ratio=st.sampled_from([0.2, 0.5, 0.8]), scope=st.sampled_from(["global", "local"]))
def test_prune_succeeds_or_refuses_cleanly(spec, ratio, scope):
    torch.manual_seed(0)
    model = FuzzNet(spec).eval()
    done = _apply_or_refused(model, lambda m: prunekit.prune(m, (X,), ratio=ratio, scope=scope))
    if done is None:
        return
    res, ref, out = done
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert res.macs_after == count_macs(model, (X,)) and res.macs_after <= res.macs_before


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(spec=architectures(), sparsity=st.sampled_from([0.3, 0.7]), pattern=st.sampled_from(["unstructured", "2:4"]))
def test_sparsify_succeeds_or_refuses_cleanly(spec, sparsity, pattern):
    torch.manual_seed(0)
    model = FuzzNet(spec).eval()
    done = _apply_or_refused(model, lambda m: prunekit.sparsify(m, None if pattern == "2:4" else sparsity,
                                                                 pattern=pattern))
    if done is None:
        return
    res, ref, out = done
    assert out.shape == ref.shape and torch.isfinite(out).all()
    report = prunekit.sparsity_report(model)
    pruned = [n for n in res.layers]
    zeros = sum(report.layers[n]["zeros"] for n in pruned if n in report.layers)
    total = sum(report.layers[n]["numel"] for n in pruned if n in report.layers)
    assert total == 0 or zeros / total == pytest.approx(res.total, abs=0.02)
