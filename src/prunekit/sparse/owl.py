"""OWL: per-layer sparsity ratios from each layer's share of outlier activations, the global sparsity fixed.

Yin et al. 2024, "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to
High Sparsity" (ICML 2024). A layer's *outlier share* is the fraction of its Wanda scores
``|W|·‖X‖₂`` above ``threshold`` (the paper's M, 5) times the layer's mean score. Layers with many
outliers hold features that matter and are pruned less: ratios run linearly from ``s + band`` at the
fewest outliers to ``s - band`` at the most (the paper's λ, 0.08), then one shift, clipped to that
band, makes the parameter-weighted mean exactly ``s``; :func:`allocate` turns them into whole
counts that add up to the global count.

As in the paper, a "layer" is a transformer block by default: the scores of all its Linear layers are
pooled, and they share one ratio (:func:`block_groups` finds blocks as the entries of the model's
``nn.ModuleList`` containers). ``OWL(blocks=False)`` gives every Linear/Conv2d its own ratio instead.

All functions here are pure; ``sparsify(..., scope="owl")`` (or ``scope=OWL(band=0.1)``) uses them
with magnitude, Wanda or SparseGPT.

>>> ratios = owl_ratios([0.01, 0.02, 0.05], [100, 100, 200], 0.7, 0.08)
>>> [round(r, 4) for r in ratios], round(sum(r * n for r, n in zip(ratios, [100, 100, 200])) / 400, 12)
([0.78, 0.7533, 0.6333], 0.7)
>>> allocate(ratios, [100, 100, 200], 280)
[78, 75, 127]
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = ["OWL", "outlier_share", "owl_ratios", "allocate", "block_groups"]


@dataclass(frozen=True)
class OWL:
    """OWL's settings, passed as ``sparsify(..., scope=OWL(band=0.1))``; ``scope="owl"`` is ``OWL()``.

    Attributes:
        threshold: a score is an outlier above ``threshold`` times its layer's mean score (M).
        band: layer ratios stay within ``sparsity ± band`` (λ).
        blocks: one ratio per block (the paper's layer); ``False``: one per target layer.
    """

    threshold: float = 5.0
    band: float = 0.08
    blocks: bool = True
    name: ClassVar[str] = "owl"

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and self.threshold > 0):
            raise ValueError(f"OWL threshold must be a number > 0, got {self.threshold!r}")
        if not (isinstance(self.band, (int, float)) and self.band >= 0):
            raise ValueError(f"OWL band must be a number >= 0, got {self.band!r}")


def block_groups(names: Sequence[str], blocks: Sequence[str]) -> list[list[int]]:
    """Indices of ``names`` grouped by the block (a name in ``blocks``, e.g. ``"encoder.layer.3"``) they
    lie in, the innermost when blocks nest; a name in no block is a group by itself. Groups come in
    the order of their first member.

    >>> block_groups(["embed", "layers.0.q", "layers.0.k", "layers.1.q"], ["layers.0", "layers.1"])
    [[0], [1, 2], [3]]
    """
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        inside = [b for b in blocks if name == b or name.startswith(b + ".")]
        key = max(inside, key=len) if inside else f"\0{name}"
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def outlier_share(score: torch.Tensor, threshold: float = 5.0) -> float:
    """Fraction of ``score``'s entries above ``threshold`` times its mean.

    >>> outlier_share(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 100.0]), 5.0)
    0.125
    """
    s = score.detach().float()
    return int((s > threshold * s.mean()).sum()) / s.numel()


def _clipped_mean(base: Sequence[float], sizes: Sequence[int], shift: float, lo: float, hi: float) -> float:
    return sum(n * min(max(b + shift, lo), hi) for b, n in zip(base, sizes, strict=True)) / sum(sizes)


def owl_ratios(shares: Sequence[float], sizes: Sequence[int], sparsity: float, band: float = 0.08) -> list[float]:
    """Per-layer sparsity ratios in ``[sparsity - band, sparsity + band]`` (and ``[0, 1]``) whose mean,
    weighted by ``sizes``, is ``sparsity``; the fewer outliers (``shares``), the higher the ratio.

    >>> owl_ratios([0.1, 0.1], [5, 7], 0.5)
    [0.5, 0.5]
    """
    if len(shares) != len(sizes) or not shares:
        raise ValueError("owl_ratios needs one outlier share per layer size, and at least one layer")
    least, most = min(shares), max(shares)
    if most == least or band == 0:
        return [float(sparsity)] * len(shares)
    lo, hi = max(0.0, sparsity - band), min(1.0, sparsity + band)
    base = [sparsity + band - 2 * band * (o - least) / (most - least) for o in shares]
    a, b = -2 * band, 2 * band  # all at lo, all at hi: the shift lies between
    for _ in range(200):
        mid = (a + b) / 2
        if _clipped_mean(base, sizes, mid, lo, hi) < sparsity:
            a = mid
        else:
            b = mid
        if b - a <= 1e-15:
            break
    shift = (a + b) / 2
    # solve exactly for the layers the band does not clip, the clipped ones fixed at their bound
    free = [lo < x + shift < hi for x in base]
    if any(free):
        fixed = sum(n * min(max(x + shift, lo), hi) for x, n, f in zip(base, sizes, free, strict=True) if not f)
        mass = sum(n for n, f in zip(sizes, free, strict=True) if f)
        moving = sum(n * x for x, n, f in zip(base, sizes, free, strict=True) if f)
        exact = (sparsity * sum(sizes) - fixed - moving) / mass
        if all(lo <= x + exact <= hi for x, f in zip(base, free, strict=True) if f):
            shift = exact
    return [min(max(x + shift, lo), hi) for x in base]


def allocate(ratios: Sequence[float], units: Sequence[int], total: int) -> list[int]:
    """Whole counts ``k_i <= units_i`` near ``ratios_i * units_i`` that add up to ``total`` exactly
    (largest remainder: the layers closest to the next whole unit get the rounding).

    >>> allocate([0.5, 0.5, 0.5], [3, 3, 3], 5)
    [2, 2, 1]
    """
    ideal = [r * u for r, u in zip(ratios, units, strict=True)]
    counts = [min(math.floor(x), u) for x, u in zip(ideal, units, strict=True)]
    diff = total - sum(counts)
    if not 0 <= total <= sum(units):
        raise ValueError(f"cannot remove {total} of {sum(units)} units")
    order = sorted(range(len(counts)), key=lambda i: ideal[i] - counts[i], reverse=diff > 0)
    while diff:
        moved = False
        for i in order:
            if diff > 0 and counts[i] < units[i]:
                counts[i] += 1
                diff -= 1
                moved = True
            elif diff < 0 and counts[i] > 0:
                counts[i] -= 1
                diff += 1
                moved = True
            if not diff:
                break
        if not moved:
            break
    return counts
