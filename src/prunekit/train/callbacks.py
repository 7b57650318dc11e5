"""Callbacks: how pruning during training plugs into :func:`prunekit.train.fit` (or your own loop).

A callback may add a term to every step's loss (:meth:`Callback.loss_term`) and act after optimizer
steps, at epoch ends and when training ends. The ones shipped:

- :class:`GradualPruning`: unstructured sparsity on Zhu & Gupta's cubic schedule
  (:class:`prunekit.GradualPruner`);
- :class:`Slimming`: Network Slimming (Liu et al., 2017). ``proximal=True`` (the default) applies the
  L1 term as a decoupled soft-threshold step on the BatchNorm scales after each optimizer step,
  ``gamma <- sign(gamma) * max(|gamma| - t, 0)`` with ``t = lr * strength`` (SGD) or that divided by
  Adam's ``sqrt(v_hat) + eps`` (Adam/AdamW), so scales reach exactly zero under AdamW too (Adam's
  per-parameter normalisation cancels a plain L1 gradient's pull);
- :class:`GroupLasso`: DepGraph-style group-norm sparsity (Fang et al., CVPR 2023): the same proximal
  step on each coupled group's unit vectors (every slice a channel owns, across layers), so whole
  channels go to zero together;
- :class:`SoftFilterPruning`: He et al., IJCAI 2018: at each epoch end, zero the producer weights of
  the units a one-shot cut would remove now, let them recover while training goes on, and remove the
  units still chosen when training ends;
- :class:`IterativeCuts`: physical cuts toward a MAC target at evenly spaced steps.

:class:`LossTerm` and :class:`OnStep` wrap plain functions. Outside :func:`fit`, call
:meth:`Callback.on_step_end` yourself after ``optimizer.step()`` with any object that has ``model``,
``step``, ``total_steps`` and ``lr`` (a :class:`LoopState`), or use :func:`hf_callback` with a
``transformers.Trainer``.

>>> import torch
>>> bn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
>>> with torch.no_grad(): _ = bn[1].weight.copy_(torch.tensor([0.5, -0.5, 2e-3, -1e-3]))
>>> Slimming(strength=1.0).on_step_end(LoopState(bn, step=1, total_steps=10, lr=0.01))
>>> bn[1].weight.tolist()
[0.49000000953674316, -0.49000000953674316, 0.0, -0.0]
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import PruningError

__all__ = ["Callback", "LoopState", "LossTerm", "OnStep", "GradualPruning", "Slimming", "GroupLasso",
           "SoftFilterPruning", "IterativeCuts", "hf_callback"]


class Callback:
    """Base class: every hook is a no-op. ``trainer`` is the :class:`prunekit.train.Trainer` (or a
    :class:`LoopState`)."""

    def on_train_begin(self, trainer) -> None: ...

    def loss_term(self, trainer) -> torch.Tensor | None:
        return None

    def on_step_end(self, trainer) -> None: ...

    def on_epoch_end(self, trainer) -> None: ...

    def on_train_end(self, trainer) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class LoopState:
    """What a callback reads, for loops other than :func:`prunekit.train.fit`."""

    model: nn.Module
    step: int = 0
    total_steps: int = 1
    lr: float = 0.0
    example_inputs: Any = None
    world_size: int = 1
    optimizer: Any = None

    def model_changed(self, structure: bool = False) -> None:
        from prunekit.train import distributed
        if not structure:
            distributed.broadcast_module(self.model)


class LossTerm(Callback):
    """Adds ``fn()`` to every step's loss (e.g. :func:`prunekit.slimming_penalty`)."""

    def __init__(self, fn: Callable[[], torch.Tensor]):
        self.fn = fn

    def loss_term(self, trainer):
        return self.fn()


class OnStep(Callback):
    """Calls ``fn(step)`` after every optimizer step."""

    def __init__(self, fn: Callable[[int], object]):
        self.fn = fn

    def on_step_end(self, trainer):
        self.fn(trainer.step)


def _fraction(value: float, name: str) -> float:
    if not 0 <= value <= 1:
        raise PruningError("model", "schedule pruning", f"{name} is a fraction of the training steps in [0, 1], "
                           f"got {value}")
    return value


class GradualPruning(Callback):
    """Unstructured sparsity rising to ``sparsity`` on the cubic schedule between ``start`` and ``end``
    (fractions of the run's steps), updated every ``every`` steps (default: 1/25 of the ramp).
    Other keywords go to :class:`prunekit.GradualPruner` (``method``, ``scope``, ``pattern``, ``ignore``).
    """

    def __init__(self, sparsity: float, start: float = 0.0, end: float = 0.5, every: int | None = None, **kw):
        self.sparsity, self.start, self.end = sparsity, _fraction(start, "start"), _fraction(end, "end")
        if not start < end:
            raise PruningError("model", "GradualPruning", f"need start < end, got {start} and {end}")
        self.every, self.kw = every, kw
        self.pruner = None
        self._state: dict | None = None

    def on_train_begin(self, trainer):
        from prunekit.sparse import GradualPruner
        t = trainer.total_steps
        s0, s1 = int(self.start * t), max(int(self.start * t) + 1, int(self.end * t))
        self.pruner = GradualPruner(trainer.model, self.sparsity, start_step=s0, end_step=s1,
                                    every=self.every or max(1, (s1 - s0) // 25), **self.kw)
        if self._state:
            self.pruner.load_state_dict(self._state)

    def on_step_end(self, trainer):
        if self.pruner.step() is not None:
            trainer.model_changed()  # rank 0's masks and weights everywhere

    @torch.no_grad()
    def on_train_end(self, trainer):
        from prunekit.sparse.masking import MASK_NAME, masked_modules
        for _, m in masked_modules(trainer.model):  # an optimizer with pre-pruning state moved them since
            m.weight.mul_(getattr(m, MASK_NAME))

    def state_dict(self):
        return self.pruner.state_dict() if self.pruner is not None else {}

    def load_state_dict(self, state):
        self._state = state or None


def _soft_threshold_(w: torch.Tensor, amount: float | torch.Tensor) -> None:
    w.copy_(w.sign() * (w.abs() - amount).clamp_min(0.0))


def _preconditioner(opt: torch.optim.Optimizer | None, p: torch.Tensor) -> float | torch.Tensor:
    """``1 / (sqrt(v_hat) + eps)`` of Adam/AdamW for ``p`` (1.0 for other optimizers, or before the first step).

    The threshold of a proximal step must live in the optimizer's metric: Adam moves every weight by
    about ``lr`` per step whatever its gradient's size, so a plain ``lr * strength`` threshold either
    loses to it everywhere or wins everywhere. Scaled by Adam's preconditioner, the L1 pull is strong on
    scales whose gradients are small (the channels the loss does not need) and weak where the loss
    defends a scale: the proximal form of putting ``strength * sign(gamma)`` into Adam's gradient.
    """
    if not isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
        return 1.0
    state = opt.state.get(p)
    if not state or "exp_avg_sq" not in state:
        return 1.0
    group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
    beta2, eps = group["betas"][1], group["eps"]
    v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
    return 1.0 / (v_hat.sqrt() + eps)


class Slimming(Callback):
    """Network Slimming's L1 on the scales of ``types`` (BatchNorm by default); see the module docstring.
    ``proximal=False`` adds ``strength * sum |gamma|`` to the loss instead (the paper's SGD form)."""

    def __init__(self, strength: float = 1e-4, proximal: bool = True, types: tuple[type, ...] | None = None):
        if not strength >= 0:
            raise PruningError("model", "Slimming", f"strength must be >= 0, got {strength}")
        self.strength, self.proximal, self.types = strength, proximal, types

    def _scales(self, model):
        """The penalty over the model's current scales (collected again each call: a cut replaces them)."""
        from prunekit.structured.slimming import BATCH_NORMS, slimming_penalty
        return slimming_penalty(model, self.strength, self.types or BATCH_NORMS)

    def on_train_begin(self, trainer):
        self._scales(trainer.model)  # refuses a model without BatchNorm before the first step

    def loss_term(self, trainer):
        return None if self.proximal else self._scales(trainer.model)()

    @torch.no_grad()
    def on_step_end(self, trainer):
        if self.proximal:
            opt = getattr(trainer, "optimizer", None)
            for _, w in self._scales(trainer.model).scales:
                _soft_threshold_(w, trainer.lr * self.strength * _preconditioner(opt, w))


def _unit_sums(group, tensors: dict[str, torch.Tensor], fn, producers_only: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit of ``group``: the sum of ``fn(name, tensor)`` over every slice it owns, and the element count."""
    total = count = None
    for occ in group.occurrences:
        if occ.is_buffer or occ.name not in tensors:
            continue
        t = tensors[occ.name]
        if producers_only and not (t.dim() > 1 and occ.dim == 0):
            continue
        v = fn(occ.name, t)
        per = v.numel() // v.shape[occ.dim] if v.dim() > 0 else 1
        red = v.transpose(0, occ.dim).reshape(v.shape[occ.dim], -1).sum(1) if v.dim() > 1 else v
        mask = occ.owner >= 0
        own = occ.owner[mask].to(red.device)
        part = torch.zeros(group.size, dtype=red.dtype, device=red.device).index_add(0, own, red[mask])
        n = torch.zeros(group.size, dtype=red.dtype, device=red.device).index_add(
            0, own, torch.full_like(red[mask], float(per)))
        total, count = (part, n) if total is None else (total + part, count + n)
    if total is None:
        return torch.zeros(group.size), torch.zeros(group.size)
    return total, count


def _unit_norms(group, params: dict[str, torch.Tensor], producers_only: bool = False) -> torch.Tensor:
    """Per-unit L2 norm over the group's slices (differentiable), optionally over producer rows only."""
    return _unit_sums(group, params, lambda n, t: t.pow(2), producers_only)[0].sqrt()


@torch.no_grad()
def _scale_units_(group, params: dict[str, torch.Tensor], factor: torch.Tensor, producers_only: bool = False) -> None:
    """Multiply every slice unit ``u`` owns by ``factor[u]`` (in place)."""
    for occ in group.occurrences:
        if occ.is_buffer or occ.name not in params:
            continue
        t = params[occ.name]
        if producers_only and not (t.dim() > 1 and occ.dim == 0):
            continue
        own = occ.owner.to(t.device)
        per_pos = torch.where(own >= 0, factor.to(t.device, t.dtype)[own.clamp_min(0)],
                              torch.ones_like(own, dtype=t.dtype))
        shape = [1] * t.dim()
        shape[occ.dim] = -1
        t.mul_(per_pos.view(shape))


def _example(trainer) -> Any:
    ex = trainer.example_inputs
    if ex is None:
        raise PruningError("model", "prune during training", "no example inputs yet (the first batch gives them)")
    if isinstance(ex, dict):
        return {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in ex.items()}
    return tuple(t[:1] if isinstance(t, torch.Tensor) else t for t in ex)


class GroupLasso(Callback):
    """Group-norm sparsity over coupled channel groups (DepGraph's regulariser, as a proximal step):
    after each optimizer step every unit's group vector ``v`` shrinks to ``v * max(0, 1 - lr * strength
    / ||v||)``, so channels the loss does not defend reach zero in every layer at once, and a later
    ``prunekit.prune`` removes them first (zero units are cut before any other). ``ignore`` as in prune."""

    def __init__(self, strength: float = 1e-3, ignore: Any = ()):
        if not strength >= 0:
            raise PruningError("model", "GroupLasso", f"strength must be >= 0, got {strength}")
        self.strength, self.ignore = strength, ignore
        self.groups = None

    def _groups(self, trainer):
        if self.groups is None:
            from prunekit.structured import groups
            self.groups = [g for g in groups(trainer.model, _example(trainer), ignore=self.ignore)
                           if g.unit == "channels"]
        return self.groups

    @torch.no_grad()
    def on_step_end(self, trainer):
        params = dict(trainer.model.named_parameters())
        opt = getattr(trainer, "optimizer", None)
        for g in self._groups(trainer):
            sq, n = _unit_sums(g, params, lambda name, t: t.pow(2))
            # Adam's metric for the unit as a whole: 1 / sqrt(mean second moment over its elements)
            v, _ = _unit_sums(g, params, lambda name, t: torch.as_tensor(
                _preconditioner(opt, t), dtype=t.dtype).expand_as(t).pow(-2))
            pre = 1.0 / (v / n.clamp_min(1)).sqrt().clamp_min(1e-12)
            # the threshold grows with sqrt(elements) (the group-lasso weight) and lives in Adam's metric
            amount = trainer.lr * self.strength * n.sqrt() * pre
            _scale_units_(g, params, (1 - amount / sq.sqrt().clamp_min(1e-12)).clamp_min(0.0))

    def share_zero(self, model: nn.Module) -> float:
        """Fraction of channel units whose whole group vector is exactly zero."""
        params = dict(model.named_parameters())
        norms = torch.cat([_unit_norms(g, params) for g in self.groups]) if self.groups else torch.zeros(0)
        return float((norms == 0).float().mean()) if norms.numel() else 0.0


class SoftFilterPruning(Callback):
    """Soft filter pruning toward ``target_macs`` (fraction of MACs kept) or ``ratio`` (fraction of units).

    At each epoch end the units a one-shot ``prunekit.prune`` would remove from the current weights
    have their producer weights (the rows that compute them) zeroed; training goes on and they may
    recover. When training ends, the units the last plan chose are removed for real (``remove=False``
    leaves the zeros in place). ``prune_kw`` go to :func:`prunekit.prune`.
    """

    def __init__(self, target_macs: float | None = None, ratio: float | None = None, remove: bool = True, **prune_kw):
        if (target_macs is None) == (ratio is None):
            raise PruningError("model", "SoftFilterPruning", "give exactly one of target_macs= or ratio=")
        self.amount = {"target_macs": target_macs} if target_macs is not None else {"ratio": ratio}
        self.remove, self.kw = remove, prune_kw
        self.zeroed = 0
        self.result = None

    def _plan(self, model: nn.Module, example) -> dict[int, list[int]]:
        from prunekit.structured import prune
        trial = copy.deepcopy(model)
        res = prune(trial, example, **self.amount, **self.kw)
        return {d["group"]: d["removed"] for d in res.decisions if d["removed"]}

    @torch.no_grad()
    def on_epoch_end(self, trainer):
        from prunekit.structured import groups
        example = _example(trainer)
        was = trainer.model.training
        trainer.model.eval()
        plan = self._plan(trainer.model, example)
        params = dict(trainer.model.named_parameters())
        self.zeroed = 0
        for g in groups(trainer.model, example, ignore=self.kw.get("ignore", ())):
            if g.id in plan:
                factor = torch.ones(g.size)
                factor[plan[g.id]] = 0.0
                _scale_units_(g, params, factor, producers_only=True)
                self.zeroed += len(plan[g.id])
        trainer.model.train(was)
        trainer.model_changed()

    def on_train_end(self, trainer):
        if not self.remove:
            return
        from prunekit.structured import prune
        self.on_epoch_end(trainer)  # the final choice, from the final weights
        trainer.model.eval()
        self.result = prune(trainer.model, _example(trainer), **self.amount, **self.kw)
        trainer.model_changed(structure=True)


class IterativeCuts(Callback):
    """``rounds`` physical cuts toward ``target_macs`` at evenly spaced steps (the first at step 0 when
    ``first_at_start``), each aimed at its share of the dense MACs (:func:`prunekit.prune_iteratively`'s
    schedule); the trainer rebuilds its optimizer and DDP wrapper after each."""

    def __init__(self, target_macs: float, rounds: int = 3, **prune_kw):
        if not 0 < target_macs <= 1 or rounds < 1:
            raise PruningError("model", "IterativeCuts", f"need 0 < target_macs <= 1 and rounds >= 1, got "
                               f"{target_macs}, {rounds}")
        self.target, self.rounds, self.kw = target_macs, rounds, prune_kw
        self.done, self.dense_macs, self.results = 0, None, []

    def _at(self, trainer) -> list[int]:
        return [int(k * trainer.total_steps / self.rounds) for k in range(self.rounds)]

    def _cut(self, trainer) -> None:
        from prunekit.measure import count_macs
        from prunekit.structured import prune
        example = _example(trainer)
        trainer.model.eval()
        now = count_macs(trainer.model, example)
        if self.dense_macs is None:
            self.dense_macs = now
        aim = self.target ** ((self.done + 1) / self.rounds) * self.dense_macs / now
        self.results.append(prune(trainer.model, example, target_macs=min(1.0, aim), **self.kw).to_dict())
        trainer.model.train()
        self.done += 1
        trainer.model_changed(structure=True)

    def on_step_end(self, trainer):
        if self.done < self.rounds and trainer.step - 1 >= self._at(trainer)[self.done]:
            self._cut(trainer)

    def state_dict(self):
        return {"done": self.done, "dense_macs": self.dense_macs}

    def load_state_dict(self, state):
        self.done, self.dense_macs = state.get("done", 0), state.get("dense_macs")


def hf_callback(*callbacks: Callback):
    """A ``transformers.TrainerCallback`` that runs prunekit callbacks inside ``transformers.Trainer``.

    Step and epoch hooks run as in :func:`prunekit.train.fit` (``Trainer`` computes the loss itself, so
    :meth:`Callback.loss_term` is not used: the proximal callbacks need none).

    >>> cb = hf_callback(Slimming(1e-4))   # Trainer(..., callbacks=[cb])
    """
    from transformers import TrainerCallback

    class PrunekitCallback(TrainerCallback):
        def __init__(self):
            self.callbacks = list(callbacks)
            self.state: LoopState | None = None

        def _sync(self, model, state, kwargs) -> LoopState:
            opt, sched = kwargs.get("optimizer"), kwargs.get("lr_scheduler")
            lr = sched.get_last_lr()[0] if sched is not None else (opt.param_groups[0]["lr"] if opt else 0.0)
            if self.state is None:
                self.state = LoopState(model)
            self.state.model, self.state.step, self.state.total_steps, self.state.lr = \
                model, state.global_step, max(1, state.max_steps), lr
            self.state.optimizer = opt
            return self.state

        def on_train_begin(self, args, state, control, model=None, **kw):
            s = self._sync(model, state, kw)
            for cb in self.callbacks:
                cb.on_train_begin(s)

        def on_step_end(self, args, state, control, model=None, **kw):
            s = self._sync(model, state, kw)
            for cb in self.callbacks:
                cb.on_step_end(s)

        def on_epoch_end(self, args, state, control, model=None, **kw):
            s = self._sync(model, state, kw)
            for cb in self.callbacks:
                cb.on_epoch_end(s)

        def on_train_end(self, args, state, control, model=None, **kw):
            s = self._sync(model, state, kw)
            for cb in self.callbacks:
                cb.on_train_end(s)

    return PrunekitCallback()
