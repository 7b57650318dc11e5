"""Pruning during training: sparsity that grows on a schedule while the model trains (Zhu & Gupta, 2017).

One-shot pruning of a finished model removes many weights at once and leaves the network to recover
afterwards. Gradual magnitude pruning instead raises the sparsity a little at a time while training
goes on, re-judging which weights matter from their current values each time, so the network adapts
to each cut before the next. The schedule is cubic: fast at first, when there are many redundant
weights, slow near the end.

:func:`cubic_sparsity` is the schedule (a pure function of the step); :class:`GradualPruner` applies
it: call :meth:`GradualPruner.step` after every optimizer step and it calls :func:`prunekit.sparsify`
at the update steps. Pruned weights stay at zero between updates (the masks of
:mod:`prunekit.sparse.masking`), so magnitude scores see them as zero and the masks only grow.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
>>> pruner = GradualPruner(net, 0.75, end_step=10, every=2)
>>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
>>> for _ in range(12):
...     opt.zero_grad(); net(torch.randn(8, 16)).sum().backward(); opt.step()
...     _ = pruner.step()
>>> pruner.sparsity, float((net[0].weight == 0).float().mean()), [s for _, s in pruner.history][:3]
(0.75, 0.75, [0.367188, 0.589844, 0.703125])
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from prunekit.compat import renamed
from prunekit.errors import PruningError
from prunekit.sparse.oneshot import SparsityResult, _check_args, local_scope, sparsify
from prunekit.sparse.targets import default_targets

__all__ = ["cubic_sparsity", "update_steps", "GradualPruner"]


def cubic_sparsity(step: int, final: float, end_step: int, start_step: int = 0, initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule: ``initial`` at ``start_step``, ``final`` from ``end_step`` on, cubic between.

    >>> [round(cubic_sparsity(t, 0.9, 10), 3) for t in (0, 2, 5, 10, 20)]
    [0.0, 0.439, 0.787, 0.9, 0.9]
    """
    if step <= start_step:
        return initial if step == start_step else 0.0
    done = min(1.0, (step - start_step) / max(1, end_step - start_step))
    return final + (initial - final) * (1.0 - done) ** 3


def update_steps(end_step: int, start_step: int = 0, every: int = 1) -> list[int]:
    """The steps at which the sparsity is raised: every ``every`` steps from ``start_step``, and ``end_step``.

    >>> update_steps(10, 0, 4)
    [0, 4, 8, 10]
    """
    steps = list(range(start_step, end_step + 1, every))
    return steps if steps[-1] == end_step else [*steps, end_step]


class GradualPruner:
    """Raise ``model``'s sparsity to ``sparsity`` on :func:`cubic_sparsity` between two optimizer steps.

    Call :meth:`step` once after every optimizer step; at each of :func:`update_steps` it re-scores
    the weights and calls :func:`prunekit.sparsify` with the schedule's sparsity (``criterion``, ``scope``,
    ``pattern``, ``calib`` and ``ignore`` as there; N:M patterns have one fixed sparsity, so they are
    refused: train with ``sparsify(model, None, pattern="2:4")`` applied once instead). From
    ``end_step`` on the model holds ``sparsity``; :func:`prunekit.finalize` bakes the masks in. The
    first update comes after the first step; to start from ``initial`` > 0, call :meth:`prune_now`
    before training.

    Arguments are checked here, before anything changes; a bad one raises ``PruningError``.
    """

    def __init__(self, model: nn.Module, sparsity: float, *, end_step: int, start_step: int = 0, every: int = 1,
                 initial: float = 0.0, criterion: str = "magnitude", scope: str = "global",
                 pattern: str = "unstructured", calib: Any = None, ignore: Iterable[Any] = (),
                 method: str | None = None):
        method = renamed("GradualPruner", "method", "criterion", method, criterion, "magnitude")
        scope = local_scope(scope, "GradualPruner")
        sparsity, pat = _check_args(sparsity, method, scope, pattern, calib)
        if pat.kind == "nm":
            raise PruningError("model", "GradualPruner", f"pattern {pattern!r} fixes the sparsity at "
                               f"{pat.sparsity:g}, so there is nothing to schedule; use "
                               "prunekit.sparsify(model, None, pattern=...) once, then train")
        if not 0 <= start_step < end_step:
            raise PruningError("model", "GradualPruner", f"need 0 <= start_step < end_step, got start_step "
                               f"{start_step}, end_step {end_step}")
        if every < 1:
            raise PruningError("model", "GradualPruner", f"every must be >= 1 step, got {every}")
        if not 0 <= initial <= sparsity:
            raise PruningError("model", "GradualPruner", f"initial sparsity {initial} must lie in [0, {sparsity}]")
        if not default_targets(model, ignore):
            raise PruningError("model", "GradualPruner", "no Linear or Conv2d layer to sparsify (all ignored?)")
        self.model, self.final, self.initial = model, sparsity, initial
        self.start_step, self.end_step, self.every = start_step, end_step, every
        self.options = {"criterion": method, "scope": scope, "pattern": pattern, "calib": calib,
                        "ignore": tuple(ignore)}
        self.updates = set(update_steps(end_step, start_step, every))
        self.steps = 0
        self.sparsity = 0.0
        self.result: SparsityResult | None = None  # the last update's
        self.history: list[tuple[int, float]] = []  # (step, achieved sparsity) at each update

    def target(self, step: int) -> float:
        """The schedule's sparsity at ``step``."""
        return cubic_sparsity(step, self.final, self.end_step, self.start_step, self.initial)

    def step(self) -> SparsityResult | None:
        """Count one optimizer step; at an update step, prune to the schedule's sparsity and return the result."""
        self.steps += 1
        return self.prune_now() if self.steps in self.updates else None

    def prune_now(self) -> SparsityResult | None:
        """Prune to the schedule's sparsity at the current step count (no-op while it is 0)."""
        s = self.target(self.steps)
        if s <= 0.0:
            return None
        res = sparsify(self.model, s, **self.options)
        self.result, self.sparsity = res, res.total
        self.history.append((self.steps, res.total))
        return res

    def state_dict(self) -> dict:
        """The step count and achieved sparsity, to resume a run (the masks travel with the model)."""
        return {"steps": self.steps, "sparsity": self.sparsity, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.sparsity, self.history = state["steps"], state["sparsity"], list(state["history"])
