import doctest

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import PruningError
from prunekit.train import Callback, TrainConfig, evaluate, fit
from prunekit.train import checkpoint as ckpt_module
from prunekit.train import loop as loop_module
from prunekit.train import losses as losses_module


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3))


def _data(n=96):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() + (x[:, 0, 4:].mean((1, 2)) > 0.3).long()
    return x, y


def test_docstring_examples_run():
    for mod in (loop_module, ckpt_module, losses_module):
        assert doctest.testmod(mod, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize("form", ["loader", "dataset", "list", "stream"])
def test_every_data_form_trains_the_steps_asked(form):
    x, y = _data()
    data = {"loader": DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, drop_last=True),
            "dataset": TensorDataset(x, y),
            "list": [(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)],
            "stream": lambda g: ((x[i], y[i]) for i in [torch.randperm(96, generator=g)[:16]] * 6)}[form]
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    res = fit(net, data, epochs=1.5, batch=16, steps_per_epoch=6 if form == "stream" else None, progress=False)
    assert res.steps == 9 and res.images == 9 * 16 and res.world_size == 1
    assert not net.training
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_the_schedule_warms_up_then_decays_to_zero():
    x, y = _data()
    lrs = []

    class Spy(Callback):
        def on_step_end(self, trainer):
            lrs.append(trainer.lr)
    fit(_net(), [(x, y)], epochs=20, lr=0.1, warmup_steps=4, callbacks=[Spy()], progress=False)
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lrs[4] == pytest.approx(0.1) and lrs[-1] < 0.002
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


def test_same_seed_same_weights_and_training_learns():
    x, y = _data()
    nets = []
    for _ in range(2):
        net = _net()
        fit(net, TensorDataset(x, y), epochs=8, batch=16, lr=1e-2, progress=False)
        nets.append(net)
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(),
                                                 strict=True))
    assert evaluate(nets[0], [(x, y)])["top1"] > 0.7


class _Kill(Callback):
    """Stands in for a killed process: raises after ``at`` optimizer steps."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, trainer):
        if trainer.step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("every", [None, 4])
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, every):
    """6 steps an epoch; the kill comes at step 10 (mid epoch 2). Resuming from the epoch-1 checkpoint
    (or the step-8 one with checkpoint_every=4) gives bit-identical weights and optimizer state."""
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, drop_last=True)
    cfg = TrainConfig(epochs=3, lr=1e-2, progress=False, checkpoint_every=every)
    whole = _net()
    fit(whole, loader, cfg, checkpoint_dir=str(tmp_path / "a"))
    killed = _net()
    with pytest.raises(KeyboardInterrupt):
        fit(killed, loader, cfg, checkpoint_dir=str(tmp_path / "b"), callbacks=[_Kill(10)])
    resumed = _net()
    res = fit(resumed, loader, cfg, checkpoint_dir=str(tmp_path / "b"), resume=True)
    assert res.resumed_from == (8 if every else 6) and res.steps == 18
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_fresh_run_in_a_folder_with_higher_steps_keeps_its_own_checkpoints(tmp_path):
    """A first run leaves step-18 and step-24; a fresh 6-step run into the same folder must not prune its
    own step-6 because the others have higher numbers: resuming it gives the fresh run's weights."""
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, drop_last=True)
    fit(_net(), loader, epochs=4, lr=1e-2, progress=False, checkpoint_dir=str(tmp_path))
    fresh = _net()
    fit(fresh, loader, epochs=1, lr=1e-3, progress=False, checkpoint_dir=str(tmp_path))
    assert ckpt_module.latest(tmp_path).name == "step-6"
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-24", "step-6"]   # the newest and the one before
    back = _net()
    res = fit(back, loader, epochs=1, lr=1e-3, progress=False, checkpoint_dir=str(tmp_path), resume=True)
    assert res.resumed_from == 6
    for a, b in zip(fresh.state_dict().values(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(PruningError, match="no checkpoint"):
        fit(_net(), [_data()], epochs=1, checkpoint_dir=str(tmp_path), resume=True, progress=False)


@pytest.mark.parametrize("bad, match", [({"epochs": 0}, "epochs"), ({"lr": -1}, "lr"),
                                        ({"optimizer": "lion"}, "optimizer"), ({"epoch": 1}, "unknown"),
                                        ({"resume": True}, "checkpoint_dir")])
def test_bad_options_are_refused_before_training(bad, match):
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(PruningError, match=match):
        fit(net, [_data()], progress=False, **bad)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def _plain():
    net = _net()
    net[3].p = 0.0  # no dropout: student and teacher see the same function of the batch
    return net


def _kl(student, teacher, x):
    from prunekit.train.losses import kl_logits
    with torch.no_grad():
        return float(kl_logits(student.eval()(x), teacher(x), 1.0))


def test_unlabelled_batches_need_a_teacher_and_distil_from_it():
    x, _ = _data()
    with pytest.raises(PruningError, match="teacher"):
        fit(_net(), [(x,)], progress=False)
    torch.manual_seed(5)
    teacher = nn.Sequential(*[m for m in _plain()]).eval()
    with torch.no_grad():
        teacher[-1].weight.normal_(0, 2.0)  # a teacher with confident, different answers
    student = _plain()
    start = _kl(student, teacher, x)
    fit(student, [(x,)], epochs=150, lr=1e-2, teacher=teacher, progress=False)
    assert _kl(student, teacher, x) < 0.3 * start


def test_distillation_from_precomputed_logits_equals_a_teacher():
    x, y = _data()
    teacher = _plain().eval()
    with torch.no_grad():
        soft = teacher(x)
    a, b = _plain(), _plain()
    fit(a, [(x, y)], epochs=3, teacher=teacher, progress=False)
    fit(b, [(x, y, soft)], epochs=3, progress=False)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_the_teacher_is_given_back_as_it_came_so_a_second_fit_can_train_a_copy_of_it():
    import copy
    x, y = _data()
    teacher = _net().train()
    teacher[-1].bias.requires_grad_(False)  # a user's own frozen part stays frozen
    fit(copy.deepcopy(teacher), [(x, y)], epochs=1, teacher=teacher, progress=False)
    assert teacher.training and [p.requires_grad for p in teacher.parameters()] == [True] * 5 + [False]
    with pytest.raises(PruningError, match="step 0"):  # also after a failed run
        fit(_net(), [(x * float("nan"), y)], teacher=teacher, progress=False)
    assert teacher.training and [p.requires_grad for p in teacher.parameters()] == [True] * 5 + [False]
    fit(copy.deepcopy(teacher), [(x, y)], epochs=1, progress=False)  # its copy trains


def test_a_nan_loss_stops_with_the_step_named():
    x, y = _data()
    with pytest.raises(PruningError, match="step 0"):
        fit(_net(), [(x * float("nan"), y)], progress=False)


def test_adopt_keeps_the_callers_module_objects_and_their_hooks():
    from prunekit.train.checkpoint import adopt
    mine = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    saved = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    inner, calls = mine[0], []
    inner.register_forward_hook(lambda m, i, o: calls.append(1))
    adopt(mine, saved)
    assert mine[0] is inner and torch.equal(inner.weight, saved[0].weight)
    mine(torch.randn(1, 3))
    assert calls == [1]
