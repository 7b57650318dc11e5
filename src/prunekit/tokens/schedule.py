"""How many tokens each layer merges: constant, linearly changing, an explicit list, or solved for a
target MAC fraction.

ToMe (Bolya et al., ICLR 2023) merges a constant ``r`` per layer and reports a linearly decreasing
schedule as an alternative; here every schedule is a small dataclass with ``per_layer``. All of them
are clipped the same way: a layer can merge at most half of its unprotected tokens.

>>> Constant(16).per_layer(num_layers=12, num_tokens=197, num_protected=1)[-2:]
[16, 10]
>>> Linear(8, 0).per_layer(5, 197, 1)
[8, 6, 4, 2, 0]
>>> PerLayer([4, 4, 0]).per_layer(3, 197, 1)
[4, 4, 0]
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, Union

__all__ = ["Schedule", "Constant", "Linear", "PerLayer", "Proportion", "decreasing", "as_schedule", "clip",
           "token_counts", "max_r", "solve_for_macs", "RSpec"]


class Schedule(Protocol):
    def per_layer(self, num_layers: int, num_tokens: int, num_protected: int) -> list[int]:
        """``r`` of every layer (clipped) for a stack of ``num_layers`` seeing ``num_tokens`` tokens."""
        ...


def clip(rs: Sequence[int], num_tokens: int, num_protected: int) -> list[int]:
    """Clip each ``r`` to half the unprotected tokens left at that layer.

    >>> clip([10, 10, 10], 21, 1)
    [10, 5, 2]
    """
    out, n = [], num_tokens
    for r in rs:
        r = max(0, min(int(r), (n - num_protected) // 2))
        out.append(r)
        n -= r
    return out


def token_counts(rs: Sequence[int], num_tokens: int) -> list[int]:
    """Tokens entering each layer's MLP (after its merge), given per-layer ``rs``.

    >>> token_counts([2, 2], 10)
    [8, 6]
    """
    out, n = [], num_tokens
    for r in rs:
        n -= r
        out.append(n)
    return out


@dataclass(frozen=True)
class Constant:
    """The same ``r`` in every layer (ToMe's default)."""

    r: int

    def per_layer(self, num_layers: int, num_tokens: int, num_protected: int) -> list[int]:
        return clip([self.r] * num_layers, num_tokens, num_protected)


@dataclass(frozen=True)
class Linear:
    """``r`` changing linearly from ``start`` (first layer) to ``end`` (last layer), rounded."""

    start: float
    end: float

    def per_layer(self, num_layers: int, num_tokens: int, num_protected: int) -> list[int]:
        if num_layers == 1:
            return clip([round(self.start)], num_tokens, num_protected)
        step = (self.end - self.start) / (num_layers - 1)
        return clip([round(self.start + i * step) for i in range(num_layers)], num_tokens, num_protected)


@dataclass(frozen=True)
class PerLayer:
    """An explicit ``r`` per layer; missing trailing layers merge nothing."""

    values: tuple[int, ...]

    def __init__(self, values: Sequence[int]):
        object.__setattr__(self, "values", tuple(int(v) for v in values))

    def per_layer(self, num_layers: int, num_tokens: int, num_protected: int) -> list[int]:
        if len(self.values) > num_layers:
            raise ValueError(f"{len(self.values)} values for {num_layers} layers")
        rs = list(self.values) + [0] * (num_layers - len(self.values))
        return clip(rs, num_tokens, num_protected)


@dataclass(frozen=True)
class Proportion:
    """Merge ``fraction`` of the input tokens over the whole stack, spread evenly over the layers.

    Unlike a fixed ``r`` this adapts to the sequence length of each batch (text encoders).

    >>> Proportion(0.3).per_layer(6, 40, 1)      # 12 of 40 tokens
    [2, 2, 2, 2, 2, 2]
    """

    fraction: float

    def per_layer(self, num_layers: int, num_tokens: int, num_protected: int) -> list[int]:
        total = round(self.fraction * num_tokens)
        base, extra = divmod(total, num_layers)
        return clip([base + (1 if i < extra else 0) for i in range(num_layers)], num_tokens, num_protected)


def decreasing(r: int) -> Linear:
    """A linearly decreasing schedule merging about as many tokens in total as ``Constant(r)``:
    ``2r`` in the first layer down to 0 in the last."""
    return Linear(2 * r, 0)


RSpec = Union[int, Sequence[int], Schedule]  # noqa: UP007 (a runtime alias, Python 3.10 safe)


def as_schedule(r: RSpec) -> Schedule:
    """An int becomes :class:`Constant`, a list :class:`PerLayer`; a schedule passes through."""
    if isinstance(r, bool):
        raise TypeError("r must be an int, a list of ints or a schedule")
    if isinstance(r, int):
        if r < 0:
            raise ValueError(f"r must be >= 0, got {r}")
        return Constant(r)
    if isinstance(r, (list, tuple)):
        if any(int(v) < 0 for v in r):
            raise ValueError(f"r values must be >= 0, got {list(r)}")
        return PerLayer(r)
    if hasattr(r, "per_layer"):
        return r
    raise TypeError(f"r must be an int, a list of ints or a schedule, got {type(r).__name__}")


def max_r(num_layers: int, num_tokens: int, num_protected: int) -> int:
    """The largest constant ``r`` that every layer can merge in full (no clipping).

    >>> max_r(12, 197, 1)     # ViT-B/16 at 224 px and fmnist-vit: 196 patches + class token
    15
    """
    r = 0
    while Constant(r + 1).per_layer(num_layers, num_tokens, num_protected) == [r + 1] * num_layers:
        r += 1
    return r


def solve_for_macs(macs_of: Callable[[Schedule], int], dense_macs: int, fraction: float, r_limit: int,
                   family: Callable[[int], Schedule] = Constant) -> Schedule:
    """The smallest ``family(r)``, ``0 <= r <= r_limit``, whose MACs are at most ``fraction`` of dense.

    MACs fall monotonically with ``r``, so this bisects; when even ``r_limit`` is not enough it is
    returned. ``macs_of`` measures a schedule (``prunekit.tokens.merge`` passes a MAC counter).

    >>> solve_for_macs(lambda s: 100 - 5 * s.r, 100, 0.8, 15)
    Constant(r=4)
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"target MAC fraction must be in (0, 1], got {fraction}")
    lo, hi = 0, r_limit
    if macs_of(family(hi)) > fraction * dense_macs:
        return family(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if macs_of(family(mid)) <= fraction * dense_macs:
            hi = mid
        else:
            lo = mid + 1
    return family(lo)
