"""Build many generated samples on several CPU cores (``PRUNEKIT_WORKERS``, default 1).

Every derived sample is a pure function of its index, so the index range splits into chunks that
worker processes build independently; the result is the same as a serial build, sample for sample.

>>> build_stacked(lambda i: (torch.tensor([i]), torch.tensor(2 * i)), 4)[1].tolist()
[0, 2, 4, 6]
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable

import torch

__all__ = ["build_stacked", "default_workers"]

_JOB: Callable[[int], tuple] | None = None  # the per-sample builder, inherited by forked workers


def default_workers() -> int:
    """``PRUNEKIT_WORKERS`` (an integer >= 1), else 1: a serial build."""
    raw = os.environ.get("PRUNEKIT_WORKERS", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"PRUNEKIT_WORKERS={raw!r}: set it to a whole number of worker processes, 1 or more")
    return int(raw)


def _stack(samples: list[tuple]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.stack(column) for column in zip(*samples, strict=True))


def _chunk(bounds: tuple[int, int]) -> tuple:
    """One chunk, as numpy arrays: they travel by value through the pipe, not through /dev/shm."""
    torch.set_num_threads(1)
    return tuple(t.numpy() for t in _stack([_JOB(i) for i in range(*bounds)]))


def build_stacked(make: Callable[[int], tuple], n: int, workers: int | None = None) -> tuple[torch.Tensor, ...]:
    """``make(i)`` for ``i < n``, each a tuple of tensors, stacked column by column.

    ``workers`` > 1 forks that many processes (POSIX only), each building a contiguous chunk; each
    chunk comes back as a few stacked tensors, not one object per sample.
    """
    global _JOB
    workers = default_workers() if workers is None else workers
    if workers <= 1 or n < 2 * workers or "fork" not in mp.get_all_start_methods():
        return _stack([make(i) for i in range(n)])
    step = -(-n // (4 * workers))
    bounds = [(a, min(n, a + step)) for a in range(0, n, step)]
    _JOB = make
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_chunk, bounds)
    finally:
        _JOB = None
    return tuple(torch.cat([torch.from_numpy(a) for a in col]) for col in zip(*parts, strict=True))
