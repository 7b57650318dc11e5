"""Importance criteria: how much each unit (channel, neuron, head) of a coupled group matters.

Scores are aggregated over the *whole* group, every parameter slice a unit owns (DepGraph, Fang et
al., CVPR 2023): producer rows, norm scales, consumer columns. Lower scores are pruned first.

- ``l1`` / ``l2``: magnitude of the unit's weights (Li et al., ICLR 2017 "Pruning Filters").
- ``bn_scale``: ``|gamma|`` of the normalisation layers in the group (Network Slimming, Liu et al.,
  ICCV 2017); groups without a norm layer fall back to ``l2``.
- ``taylor``: first-order Taylor expansion ``|w * dL/dw|`` (Molchanov et al., CVPR 2019), on ``calib``.
- ``random``: a seeded baseline.

A user's own criterion subclasses :class:`Importance` and returns one score per unit:

>>> import torch
>>> class Smallest(Importance):
...     def __call__(self, group, params):
...         return unit_scores(group, params, lambda name, w: w.abs())
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
>>> from prunekit.structured.trace import trace
>>> grp = trace(net, (torch.randn(1, 4),)).groups()[0]
>>> Smallest()(grp, dict(net.named_parameters())).shape
torch.Size([6])
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunekit.structured.trace import Group, TraceResult, flat_tensors

__all__ = ["Importance", "Magnitude", "BNScale", "Taylor", "RandomImportance", "unit_scores", "get_importance",
           "CRITERIA"]


def unit_scores(group: Group, params: dict[str, torch.Tensor],
                per_element: Callable[[str, torch.Tensor], torch.Tensor | None],
                names: set[str] | None = None, p: int | None = None) -> torch.Tensor:
    """Sum ``per_element(name, tensor)`` over every slice each unit of ``group`` owns.

    With ``p``, each slice contributes the sum of ``|x|**p`` of ``per_element``'s result; rows that are
    contiguous (the unit is dim 0) are reduced by ``torch.linalg.vector_norm`` in one pass instead of an
    elementwise power and a sum."""
    scores = torch.zeros(group.size, dtype=torch.float64)
    for occ in group.occurrences:
        if occ.is_buffer or (names is not None and occ.name not in names) or occ.name not in params:
            continue
        t = per_element(occ.name, params[occ.name].detach())
        if t is None or t.numel() == 0:
            continue
        # reduced in place (no transposed copy) in at least float32: each element is already rounded to the
        # weights' precision, a float64 reduction costs 3x the time and buys nothing; units add up in float64
        others = [d for d in range(t.dim()) if d != occ.dim]
        acc = torch.promote_types(t.dtype, torch.float32)
        if others and p is not None and occ.dim == 0 and t.is_contiguous():  # one contiguous row per unit
            red = torch.linalg.vector_norm(t.reshape(t.shape[0], -1), p, dim=1, dtype=acc).double() ** p
        else:
            x = t if p is None else t.square() if p == 2 else t.abs() ** p
            if not others:
                red = x.double()
            else:  # viewed as [before, unit, after]: summing the leading rows first is one vectorised pass,
                # where a reduction over strided dims (a conv's input channels) is several times slower
                rows = math.prod(t.shape[:occ.dim])
                red = x.reshape(rows, -1).sum(0, dtype=acc).reshape(t.shape[occ.dim], -1).sum(1).double()
        mask = occ.owner >= 0
        scores.index_add_(0, occ.owner[mask], red[mask])
    return scores


class Importance:
    """Base class for criteria: ``__call__(group, params)`` returns one score per unit (low = prune).

    ``prepare(model, trace, example_inputs, calib)`` runs once before scoring (e.g. to collect gradients).
    """

    name = "custom"

    def prepare(self, model: nn.Module, trace: TraceResult, example_inputs: Any, calib: Any) -> None:
        return None

    def __call__(self, group: Group, params: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class Magnitude(Importance):
    """``p=1``: sum of |w|; ``p=2``: L2 norm of all the unit's weights in the group."""

    def __init__(self, p: int = 2):
        self.p = p
        self.name = f"l{p}"

    def __call__(self, group, params):
        if self.p == 1:
            return unit_scores(group, params, lambda n, w: w, p=1)
        return unit_scores(group, params, lambda n, w: w, p=2).sqrt()


class BNScale(Importance):
    """|gamma| of BatchNorm/LayerNorm/GroupNorm scales in the group (Network Slimming)."""

    name = "bn_scale"

    def __init__(self):
        self.norms: set[str] = set()
        self.fallback = Magnitude(2)

    def prepare(self, model, trace, example_inputs, calib):
        self.norms = set(trace.norm_weights)

    def __call__(self, group, params):
        names = {o.name for o in group.occurrences} & self.norms
        if not names:
            return self.fallback(group, params)
        return unit_scores(group, params, lambda n, w: w.abs(), names)


def _loss(out: Any, target: Any) -> torch.Tensor:
    if target is not None:
        return nn.functional.cross_entropy(out, target)
    ts = [t for t in flat_tensors(out) if t.is_floating_point()]
    return sum(t.float().pow(2).mean() for t in ts)


class Taylor(Importance):
    """First-order Taylor importance ``|w * dL/dw|`` summed over the calibration batches.

    ``calib``: the one form of :mod:`prunekit.calib` (one batch or an iterable of batches, each the
    model inputs or an ``(inputs, targets)`` pair for cross-entropy), or a callable
    ``calib(model) -> loss``; without targets the loss is the mean square of the outputs (a
    label-free proxy).
    """

    name = "taylor"

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def prepare(self, model, trace, example_inputs, calib):
        from prunekit.calib import calib_batches, split_targets
        from prunekit.measure import run_model
        batches = calib_batches(calib, "model", "score channels by Taylor importance", allow_callable=True)
        params = dict(model.named_parameters())
        saved = {n: (p.grad, p.requires_grad) for n, p in params.items()}
        acc = {n: torch.zeros_like(p) for n, p in params.items()}
        was = model.training
        model.eval()
        try:
            for p in params.values():
                p.requires_grad_(True)
            for batch in batches:
                for p in params.values():
                    p.grad = None
                if callable(batch):
                    loss = batch(model)
                else:
                    inputs, targets = split_targets(batch)
                    loss = _loss(run_model(model, inputs), targets)
                loss.backward()
                for n, p in params.items():
                    if p.grad is not None:
                        acc[n] += (p.detach() * p.grad).abs()
        finally:
            for n, p in params.items():
                p.grad, rg = saved[n]
                p.requires_grad_(rg)
            model.train(was)
        self.grads = acc

    def __call__(self, group, params):
        return unit_scores(group, params, lambda n, w: self.grads.get(n))


class RandomImportance(Importance):
    """Uniform random scores (seeded): the baseline every criterion must beat."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, group, params):
        return torch.rand(group.size, generator=self.gen, dtype=torch.float64)


CRITERIA: dict[str, Callable[[], Importance]] = {
    "l1": lambda: Magnitude(1), "l2": lambda: Magnitude(2), "bn_scale": BNScale, "taylor": Taylor,
    "random": RandomImportance,
}


def get_importance(spec: str | Importance | Callable) -> Importance:
    """A criterion from its name, an :class:`Importance` instance, or a ``fn(group, params)`` callable."""
    if isinstance(spec, Importance):
        return spec
    if isinstance(spec, str):
        if spec not in CRITERIA:
            raise ValueError(f"unknown importance {spec!r}; choose one of {sorted(CRITERIA)} or pass an Importance")
        return CRITERIA[spec]()
    if callable(spec):
        wrapped = type("CallableImportance", (Importance,), {"__call__": lambda self, g, p: spec(g, p)})()
        return wrapped
    raise TypeError(f"importance must be a name, an Importance or a callable, not {type(spec).__name__}")
