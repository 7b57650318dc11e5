"""Network Slimming (Liu et al., ICCV 2017): train with an L1 penalty on BatchNorm scales, then prune by them.

The channels a network needs are judged while it trains: the penalty ``strength * sum |gamma|`` pushes
the BatchNorm scale of every channel the loss can do without towards zero, so when training stops,
``prunekit.prune(..., criterion="bn_scale")`` removes channels that already contribute almost
nothing, and the accuracy lost at the cut is smaller than when pruning a model trained without it.

>>> import torch, prunekit
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
...                           torch.nn.Conv2d(8, 4, 3))
>>> penalty = slimming_penalty(net, 1e-3)
>>> round(penalty().item(), 6)            # 1e-3 * (8 scales at 1.0)
0.008
>>> loss = net(torch.randn(2, 1, 8, 8)).pow(2).mean() + penalty()   # add it to the training loss
>>> res = prunekit.prune(net, (torch.randn(1, 1, 8, 8),), ratio=0.5, criterion="bn_scale")
>>> net[0].out_channels
4
"""
from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import PruningError

__all__ = ["SlimmingPenalty", "slimming_penalty", "BATCH_NORMS", "scale_share_below"]

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class SlimmingPenalty:
    """``strength * sum |gamma|`` over the scales of ``model``'s normalisation layers of ``types``; call it
    once per step and add the result to the loss. The scales are collected once, at construction."""

    def __init__(self, model: nn.Module, strength: float = 1e-4, types: tuple[type, ...] = BATCH_NORMS):
        if not strength >= 0:
            raise PruningError("model", "slimming_penalty", f"strength must be >= 0, got {strength}")
        self.scales = [(n, m.weight) for n, m in model.named_modules()
                       if isinstance(m, types) and getattr(m, "weight", None) is not None]
        if not self.scales:
            kinds = ", ".join(t.__name__ for t in types)
            raise PruningError("model", "slimming_penalty", f"no affine {kinds} layer: Network Slimming needs "
                               "normalisation scales to penalise; prune with criterion='l2' instead")
        self.strength = strength

    def __call__(self) -> torch.Tensor:
        return self.strength * sum(w.abs().sum() for _, w in self.scales)


def slimming_penalty(model: nn.Module, strength: float = 1e-4, types: tuple[type, ...] = BATCH_NORMS
                     ) -> SlimmingPenalty:
    """The Network Slimming loss term for ``model`` (a :class:`SlimmingPenalty`; ``strength`` is the
    paper's lambda, 1e-4 to 1e-5 for its CIFAR models). Raises ``PruningError`` if ``model`` has no
    affine layer of ``types``."""
    return SlimmingPenalty(model, strength, types)


@torch.no_grad()
def scale_share_below(model: nn.Module, threshold: float = 1e-2, types: tuple[type, ...] = BATCH_NORMS) -> float:
    """Fraction of the normalisation scales of ``types`` with ``|gamma| < threshold`` (how far slimming
    has gone; 0.0 when there are none).

    >>> scale_share_below(torch.nn.BatchNorm1d(4))
    0.0
    """
    scales = [m.weight.abs().flatten() for m in model.modules()
              if isinstance(m, types) and getattr(m, "weight", None) is not None]
    if not scales:
        return 0.0
    flat = torch.cat(scales)
    return float((flat < threshold).float().mean())
