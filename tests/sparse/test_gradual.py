import doctest

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit.errors import PruningError
from prunekit.sparse import GradualPruner, cubic_sparsity, default_targets, is_masked
from prunekit.sparse import gradual as gradual_module
from prunekit.sparse.gradual import update_steps


def test_docstring_examples_run():
    assert doctest.testmod(gradual_module).failed == 0


def test_cubic_schedule_endpoints_and_formula():
    assert cubic_sparsity(5, 0.8, 25, start_step=5, initial=0.1) == 0.1
    assert cubic_sparsity(25, 0.8, 25, start_step=5, initial=0.1) == pytest.approx(0.8)
    assert cubic_sparsity(99, 0.8, 25, start_step=5) == pytest.approx(0.8)
    assert cubic_sparsity(2, 0.8, 25, start_step=5) == 0.0  # before the start: dense
    assert cubic_sparsity(15, 0.8, 25, start_step=5) == pytest.approx(0.8 * (1 - 0.5 ** 3))


@settings(max_examples=50, deadline=None)
@given(st.floats(0.05, 0.99), st.integers(0, 50), st.integers(1, 200), st.floats(0, 1))
def test_cubic_schedule_never_decreases(final, start, span, share):
    end, initial = start + span, final * share
    values = [cubic_sparsity(t, final, end, start, initial) for t in range(start, end + 5)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:], strict=False))
    assert values[0] == pytest.approx(initial) and values[-1] == pytest.approx(final)


def test_update_steps_always_end_at_the_end():
    assert update_steps(9, 0, 3) == [0, 3, 6, 9]
    assert update_steps(10, 2, 3) == [2, 5, 8, 10]


def _train(net, pruner, steps, lr=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    seen = []
    for _ in range(steps):
        x = torch.randn(16, 4, 8, 8, generator=g)
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
        if pruner.step() is not None:
            seen.append({n: (m.weight == 0).clone() for n, m in default_targets(net)})
    return seen


def test_sparsity_follows_the_schedule_and_pruned_weights_stay_pruned(cnn):
    pruner = GradualPruner(cnn, 0.9, end_step=20, start_step=4, every=4)
    numel = sum(m.weight.numel() for _, m in default_targets(cnn))
    seen = _train(cnn, pruner, 30)
    assert [s for s, _ in pruner.history] == [8, 12, 16, 20]  # step 4 is the start, at sparsity 0
    for (step, achieved), zeros in zip(pruner.history, seen, strict=True):
        assert achieved == pytest.approx(pruner.target(step), abs=1 / numel)
        assert sum(int(z.sum()) for z in zeros.values()) == round(pruner.target(step) * numel)
    for earlier, later in zip(seen, seen[1:], strict=False):  # Adam kept training: masks only grow
        assert all(bool((earlier[n] & ~later[n]).sum() == 0) for n in earlier)
    assert pruner.sparsity == pytest.approx(0.9, abs=1 / numel)
    cnn(torch.randn(1, 4, 8, 8))  # Adam's momentum moves masked weights; every forward re-masks them first
    final = {n: (m.weight == 0).sum().item() for n, m in default_targets(cnn)}
    assert final == {n: int(z.sum()) for n, z in seen[-1].items()}  # 10 more steps freed no pruned weight


def test_zero_sparsity_is_the_dense_model(cnn):
    x = torch.randn(2, 4, 8, 8)
    ref = cnn(x)
    pruner = GradualPruner(cnn, 0.0, end_step=3)
    for _ in range(5):
        assert pruner.step() is None
    assert torch.allclose(cnn(x), ref, atol=1e-5, rtol=0)
    assert not any(is_masked(m) for m in cnn.modules())


def test_finalized_model_equals_the_masked_one_and_round_trips(cnn, tmp_path):
    pruner = GradualPruner(cnn, 0.7, end_step=6, every=2)
    _train(cnn, pruner, 8)
    cnn.eval()
    x = torch.randn(3, 4, 8, 8)
    masked = cnn(x)
    prunekit.finalize(cnn)
    assert torch.allclose(cnn(x), masked, atol=1e-6, rtol=0)
    prunekit.save(cnn, tmp_path / "g.safetensors")
    back = prunekit.load(tmp_path / "g.safetensors", classes=[type(cnn)])
    assert torch.allclose(back(x), masked, atol=1e-6, rtol=0)
    assert prunekit.sparsity_report(back).layers["conv2"]["sparsity"] > 0.3


def test_state_dict_resumes_the_count(cnn):
    pruner = GradualPruner(cnn, 0.5, end_step=10, every=5)
    _train(cnn, pruner, 6)
    again = GradualPruner(cnn, 0.5, end_step=10, every=5)
    again.load_state_dict(pruner.state_dict())
    assert again.steps == 6 and again.history == pruner.history
    for _ in range(4):
        again.step()
    assert again.sparsity == pytest.approx(0.5, abs=1e-3)


def test_wanda_schedule_uses_the_calibration_batch(mlp):
    calib = torch.randn(32, mlp[0].in_features)
    pruner = GradualPruner(mlp, 0.5, end_step=2, criterion="wanda", calib=calib)
    pruner.step()
    pruner.step()
    assert pruner.sparsity == pytest.approx(0.5, abs=1e-2)


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 0.5, "end_step": 10, "pattern": "2:4"}, "nothing to schedule"),
    ({"sparsity": 0.5, "end_step": 3, "start_step": 3}, "start_step < end_step"),
    ({"sparsity": 0.5, "end_step": 3, "every": 0}, "every must be"),
    ({"sparsity": 0.5, "end_step": 3, "initial": 0.7}, "initial sparsity"),
    ({"sparsity": 1.5, "end_step": 3}, "sparsity"),
    ({"sparsity": 0.5, "end_step": 3, "method": "wanda"}, "calib"),
    ({"sparsity": 0.5, "end_step": 3, "ignore": ["*"]}, "no Linear or Conv2d"),
])
def test_bad_arguments_raise_before_anything_changes(cnn, kwargs, match):
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    with pytest.raises(PruningError, match=match):
        GradualPruner(cnn, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())
    assert not any(is_masked(m) for m in cnn.modules())


def test_finetune_hook_prunes_a_zoo_model_while_it_trains():
    from prunekit.zoo import build
    from prunekit.zoo.finetune import finetune, finetune_steps
    torch.manual_seed(0)
    model = build("fmnist-resnet")
    steps = finetune_steps(2, batch=64, samples=256)
    pruner = GradualPruner(model, 0.8, end_step=steps - 2, every=2)
    info = finetune(model, "fmnist-resnet", epochs=2, samples=256, batch=64, on_step=lambda s: pruner.step())
    assert info["steps"] == steps == 8 and pruner.steps == 8
    assert [s for s, _ in pruner.history] == [2, 4, 6]
    assert pruner.sparsity == pytest.approx(0.8, abs=1e-3)


def test_rescoring_sees_masked_weights_as_zero_even_after_an_optimizer_moved_them(cnn):
    """Adam's momentum moves masked weights between forwards; a new sparsify must still rank them pruned."""
    prunekit.sparsify(cnn, 0.5)
    pruned = {n: m.weight_mask.clone() for n, m in default_targets(cnn)}
    with torch.no_grad():
        for _, m in default_targets(cnn):
            m.weight.add_(torch.where(m.weight_mask, 0.0, 10.0))  # stale values far above every kept weight
    prunekit.sparsify(cnn, 0.6)
    assert all(bool((m.weight_mask & ~pruned[n]).sum() == 0) for n, m in default_targets(cnn))
