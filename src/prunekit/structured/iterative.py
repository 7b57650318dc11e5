"""Structured pruning during training: cut in several rounds and train between them.

A one-shot cut to 30% of a network's MACs judges every channel once, by the weights of the dense
model. Cutting a fraction at a time, with training between the cuts, re-judges the survivors after
the network has adapted to the previous cut (iterative pruning, Han et al. 2015; Torch-Pruning's
``iterative_steps``). :func:`round_targets` is the schedule, geometric so each round keeps the same
share of what is left; :func:`prune_iteratively` runs it with your training function.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
>>> trained = []
>>> results = prune_iteratively(net, (torch.randn(4, 8),), ratio=0.75, rounds=2,
...                             train=lambda model, k: trained.append(k))
>>> net[0].out_features, trained
(16, [0, 1])
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from prunekit.errors import PruningError
from prunekit.structured.api import PruneResult, prune

__all__ = ["round_targets", "prune_iteratively"]


def round_targets(total: float, rounds: int) -> list[float]:
    """Per-round fractions whose product is ``total``: each round keeps ``total ** (1 / rounds)`` of what is left.

    >>> [round(t, 4) for t in round_targets(0.25, 2)]
    [0.5, 0.5]
    """
    return [total ** (1.0 / rounds)] * rounds


def prune_iteratively(model: nn.Module, example_inputs: Any, *, train: Callable[[nn.Module, int], object],
                      ratio: float | None = None, target_macs: float | None = None, rounds: int = 3,
                      **prune_kw) -> list[PruneResult]:
    """Prune ``model`` in place in ``rounds`` cuts, calling ``train(model, k)`` after cut ``k``.

    ``target_macs`` (fraction of the dense MACs kept) or ``ratio`` (fraction of the units removed)
    is the total; each round prunes by :func:`round_targets` of it, so the last round lands on it.
    Other keyword arguments go to :func:`prunekit.prune` (``criterion``, ``scope``, ``units``, ...).
    ``train`` gets the pruned model: its parameters are new tensors after every cut, so build the
    optimizer inside it. If a cut or a training round raises, ``model`` is put back as it was before
    the first cut and the error propagates.
    """
    if (ratio is None) == (target_macs is None):
        raise PruningError("model", "prune_iteratively", "give exactly one of ratio= or target_macs=")
    if not isinstance(rounds, int) or rounds < 1:
        raise PruningError("model", "prune_iteratively", f"rounds must be an int >= 1, got {rounds!r}")
    if target_macs is not None and not 0 < target_macs <= 1:
        raise PruningError("model", "prune_iteratively", f"target_macs must lie in (0, 1], got {target_macs}")
    if ratio is not None and not 0 <= ratio < 1:
        raise PruningError("model", "prune_iteratively", f"ratio must lie in [0, 1), got {ratio}")
    keep = round_targets(target_macs if target_macs is not None else 1.0 - ratio, rounds)
    snapshot = copy.deepcopy(model)
    results: list[PruneResult] = []
    try:
        for k, share in enumerate(keep):
            if target_macs is not None:  # aim at the schedule's share of the dense MACs, so search error cannot pile up
                dense, now = (results[0].macs_before, results[-1].macs_after) if results else (1, 1)
                amount = {"target_macs": min(1.0, target_macs ** ((k + 1) / rounds) * dense / now)}
            else:
                amount = {"ratio": 1.0 - share}
            results.append(prune(model, example_inputs, **amount, **prune_kw))
            train(model, k)
    except BaseException:
        model.__dict__.update(snapshot.__dict__)  # structure, weights and flags as before the first cut
        raise
    return results
