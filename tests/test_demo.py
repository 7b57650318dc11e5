"""The demo's steps: pruning with the built-in distilled fine-tune leaves the dense teacher untouched."""
import copy

import pytest
import torch

from prunekit.demo import _prune
from prunekit.measure import count_macs
from prunekit.zoo import load, read_manifest


@pytest.mark.skipif("fmnist-resnet" not in read_manifest(), reason="no fmnist-resnet checkpoint shipped")
def test_prune_then_distilled_finetune_step():
    wl = load("fmnist-resnet")
    dense_state = copy.deepcopy(wl.model.state_dict())
    x = wl.example_inputs
    oneshot = _prune(target_macs=0.5)(copy.deepcopy(wl.model), wl)
    tuned = _prune(0.003, target_macs=0.5)(copy.deepcopy(wl.model), wl)
    macs = count_macs(wl.model, x)
    assert count_macs(tuned, x) == count_macs(oneshot, x)
    assert abs(count_macs(tuned, x) / macs - 0.5) <= 0.02
    # the fine-tune moved the pruned weights; the teacher (the workload's dense model) did not move
    assert not torch.equal(tuned.fc.weight, oneshot.fc.weight)
    for k, v in wl.model.state_dict().items():
        assert torch.equal(v, dense_state[k]), k
    assert not wl.model.training and not tuned.training


@pytest.mark.parametrize("name,method", [("mosaic-segvit", "local-then-global"), ("mosaic-det", "local-then-global"),
                                         ("motion-vivit", "time tubes"), ("motion-vivit-pan", "time tubes"),
                                         ("motion-vivit-pan", "saliency")])
def test_local_merge_steps_cut_macs_and_leave_the_dense_model(name, method):
    from prunekit.demo import STEPS
    from prunekit.tokens import is_patched
    if name not in read_manifest():
        pytest.skip(f"no {name} checkpoint shipped")
    step, = [s for s in STEPS if s.model == name and s.method.startswith(method)]
    wl = load(name)
    merged = step.apply(copy.deepcopy(wl.model), wl)
    x = wl.example_inputs
    # mosaic-det's neck and head (28% of its MACs) run on the restored grid, and it loses mAP fast below 0.7
    assert count_macs(merged, x) < (0.71 if name == "mosaic-det" else 0.6) * count_macs(wl.model, x)
    assert is_patched(merged) and not is_patched(wl.model)
    with torch.no_grad():
        assert merged(*x).shape == wl.model(*x).shape


@pytest.mark.skipif("fmnist-resnet" not in read_manifest(), reason="no fmnist-resnet checkpoint shipped")
def test_during_training_steps_prune_and_leave_the_dense_model(monkeypatch):
    """The three pruning-during-training rows, with 20 steps of 64 images to an epoch so the test stays short."""
    import prunekit
    from prunekit import demo
    from prunekit.zoo import finetune as ft
    real, steps_of = ft.finetune, (lambda epochs: max(1, round(epochs * 20)))
    monkeypatch.setattr(ft, "finetune_steps", steps_of)
    monkeypatch.setattr(ft, "finetune", lambda m, name, epochs, **kw: real(m, name, 1, samples=64 * steps_of(epochs),
                                                                          batch=64, **kw))
    wl = load("fmnist-resnet")
    dense_state = copy.deepcopy(wl.model.state_dict())
    x = wl.example_inputs
    steps = {s.method.split(":")[1].split()[0]: s for s in demo.STEPS if s.method.startswith("during training")}
    assert sorted(steps) == ["50%", "slimming", "sparsity"]
    sparse = steps["sparsity"].apply(copy.deepcopy(wl.model), wl)
    assert abs(prunekit.sparsity_report(sparse).total["sparsity"] - 0.9) < 0.01
    assert not any(prunekit.sparse.is_masked(m) for m in sparse.modules())  # finalized
    for key in ("slimming", "50%"):
        pruned = steps[key].apply(copy.deepcopy(wl.model), wl)
        assert abs(count_macs(pruned, x) / count_macs(wl.model, x) - 0.5) <= 0.03, key
    for k, v in wl.model.state_dict().items():
        assert torch.equal(v, dense_state[k]), k
