import doctest

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import PruningError
from prunekit.structured.slimming import scale_share_below
from prunekit.train import (
    GradualPruning,
    GroupLasso,
    IterativeCuts,
    LoopState,
    LossTerm,
    Slimming,
    SoftFilterPruning,
    fit,
    hf_callback,
)
from prunekit.train import callbacks as callbacks_module


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _task():
    """The target needs one input channel's mean: most channels are spare."""
    torch.manual_seed(0)
    x = torch.randn(256, 3, 6, 6)
    y = (x[:, 0].mean((1, 2)) > 0).long() * 2 + (x[:, 0, :3].mean((1, 2)) > 0).long()
    return [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]


def test_docstring_examples_run():
    assert doctest.testmod(callbacks_module).failed == 0


def test_proximal_slimming_zeroes_scales_under_adamw_where_the_plain_l1_term_does_not():
    """Adam divides the L1 gradient by its own running scale, so the plain penalty moves every scale by
    about lr per step whatever the strength, and none lands on zero; the decoupled soft-threshold does."""
    data = _task()
    plain, prox = _net(), _net()
    fit(plain, data, epochs=50, lr=1e-2, callbacks=[Slimming(0.03, proximal=False)], progress=False)
    fit(prox, data, epochs=50, lr=1e-2, callbacks=[Slimming(0.03)], progress=False)
    exact = lambda m: float(torch.cat([b.weight.detach().flatten() for b in (m[1], m[4])]).eq(0).float().mean())  # noqa: E731
    assert exact(plain) == 0.0
    assert exact(prox) > 0.15  # measured 0.33 (0.125 at strength 0.01: the transition is gradual)


def test_a_loss_term_is_added_to_every_step():
    calls = []

    def term():
        calls.append(1)
        return torch.zeros(())
    fit(_net(), _task(), epochs=2, callbacks=[LossTerm(term)], progress=False)
    assert len(calls) == 8


def test_slimming_refuses_a_model_without_batchnorm_before_training():
    net = nn.Sequential(nn.Flatten(), nn.Linear(108, 4))
    before = net[1].weight.detach().clone()
    with pytest.raises(PruningError, match="criterion='l2'"):
        fit(net, _task(), callbacks=[Slimming()], progress=False)
    assert torch.equal(before, net[1].weight)


def test_group_lasso_zeroes_whole_coupled_channels_and_prune_removes_exactly_those():
    data = _task()
    net = _net()
    lasso = GroupLasso(strength=2e-3)
    fit(net, data, epochs=40, lr=1e-2, callbacks=[lasso], progress=False)
    assert 0.1 < lasso.share_zero(net) < 0.95  # measured 0.54 (0.25 at 1.5e-3, 0.875 at 3e-3)
    params = dict(net.named_parameters())
    dead = [(g.id, (callbacks_module._unit_norms(g, params) == 0).nonzero().flatten().tolist()) for g in lasso.groups]
    x = data[0][0]
    net.eval()
    ref = net(x)
    n_dead = sum(len(d) for _, d in dead)
    total = sum(g.size for g in lasso.groups)
    res = prunekit.prune(net, (x[:1],), ratio=n_dead / total)
    assert {d["group"]: d["removed"] for d in res.decisions if d["removed"]} == {i: d for i, d in dead if d}
    # a zero unit's BatchNorm shift survived nowhere: its scale, shift and consumer columns were zeroed too
    assert torch.allclose(net(x), ref, atol=1e-5)


def test_soft_filter_pruning_zeroes_each_epoch_and_removes_at_the_end():
    data = _task()
    net = _net()
    sfp = SoftFilterPruning(ratio=0.5, scope="local")
    zeroed = []

    class Spy(LossTerm):
        def on_epoch_end(self, trainer):
            zeroed.append(int((trainer.model[0].weight.detach().flatten(1).abs().sum(1) == 0).sum()))
    fit(net, data, epochs=3, lr=1e-2, callbacks=[sfp, Spy(lambda: torch.zeros(()))], progress=False)
    assert zeroed[0] == 8  # half of the first conv's 16 filters zeroed at the first epoch end
    assert net[0].out_channels == 8 and net[3].out_channels == 4 and sfp.result is not None
    assert net(data[0][0]).shape == (64, 4)


def test_iterative_cuts_reach_the_mac_target_and_training_goes_on_after_each():
    net = _net()
    x = _task()[0][0]
    dense = prunekit.measure.count_macs(net, (x[:1],))
    cuts = IterativeCuts(0.4, rounds=2)
    res = fit(net, _task(), epochs=4, lr=1e-2, callbacks=[cuts], progress=False)
    assert cuts.done == 2 and res.steps == 16
    assert prunekit.measure.count_macs(net, (x[:1],)) / dense == pytest.approx(0.4, abs=0.05)


def test_gradual_pruning_reaches_its_sparsity_at_the_end_of_the_ramp():
    net = _net()
    gp = GradualPruning(0.8, start=0.0, end=0.5, every=1)
    fit(net, _task(), epochs=4, lr=1e-2, callbacks=[gp], progress=False)
    assert gp.pruner.history[-1] == (8, pytest.approx(0.8, abs=1e-3))
    assert float((net[0].weight == 0).float().mean()) > 0.5
    with pytest.raises(PruningError, match="start < end"):
        GradualPruning(0.5, start=0.5, end=0.5)


def test_a_plain_loop_drives_the_same_callbacks():
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    slim = Slimming(0.03)
    state = LoopState(net, total_steps=100, optimizer=opt)
    for step, (x, y) in enumerate(_task() * 25):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        state.step, state.lr = step + 1, 1e-2
        slim.on_step_end(state)
    assert scale_share_below(net, 1e-12) > 0.15


def test_the_hugging_face_callback_drives_them_inside_a_trainer(tmp_path):
    transformers = pytest.importorskip("transformers")
    from torch.utils.data import Dataset

    class Data(Dataset):
        def __init__(self):
            self.items = [(x[i], y[i]) for x, y in _task() for i in range(x.shape[0])]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return {"pixel_values": self.items[i][0], "labels": self.items[i][1]}

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, pixel_values, labels=None):
            logits = self.net(pixel_values)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    model = Wrapped()
    gp = GradualPruning(0.5, start=0.0, end=0.5, every=1)
    args = transformers.TrainingArguments(str(tmp_path), max_steps=12, per_device_train_batch_size=32,
                                          learning_rate=1e-3, report_to=[], save_strategy="no",
                                          use_cpu=True, disable_tqdm=True, logging_strategy="no")
    transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[hf_callback(gp)]).train()
    assert gp.pruner.history[-1][1] == pytest.approx(0.5, abs=1e-3)
    w = torch.cat([model.net[0].weight.flatten(), model.net[3].weight.flatten()])  # global scope: both convs
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
