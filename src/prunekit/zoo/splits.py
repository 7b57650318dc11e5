"""The vision zoo models' data splits: each eval split, and calibration batches from a training split.

Each eval loader returns the first ``limit`` of the split's ``n`` samples (all without a limit), as
raw ``(images, labels)``. The generated splits are prefix-stable (sample ``i`` is the same whatever
``n`` is), so a limited evaluation builds only the samples it scores. The ``n`` of each model is
its :class:`~prunekit.zoo.ZooEntry`'s ``eval_samples``.

>>> x, y = fmnist_test(limit=4)
>>> tuple(x.shape), x.dtype, tuple(y.shape)
((4, 1, 28, 28), torch.uint8, (4,))
>>> [tuple(b[0].shape) for b in fmnist_calibration(96, batch=64)]
[(64, 1, 28, 28), (32, 1, 28, 28)]
"""
from __future__ import annotations

import torch

from prunekit.data import load_det_mosaic, load_fashion_mnist, load_mosaic, load_motion, normalize

__all__ = ["fmnist_test", "mosaic_test", "det_test", "motion_test", "motion_pan_test", "fmnist_calibration"]


def _count(limit: int | None, n: int) -> int:
    return min(limit, n) if limit else n


def fmnist_test(limit: int | None = None, n: int = 10000) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's test images ``(N, 1, 28, 28)`` uint8 and labels: fmnist-resnet's and fmnist-vit's eval split."""
    x, y = load_fashion_mnist("test")
    k = _count(limit, n)
    return x[:k], y[:k]


def mosaic_test(limit: int | None = None, n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Test mosaics ``(N, 1, 56, 56)`` and their label maps ``(N, 56, 56)``: mosaic-segvit's eval split."""
    return load_mosaic("test", n=_count(limit, n))


def det_test(limit: int | None = None, n: int = 2000) -> tuple[torch.Tensor, ...]:
    """Test detection mosaics ``(N, 1, 112, 112)`` with their padded boxes, classes and ignore flags:
    mosaic-det's eval split (:func:`prunekit.data.load_det_mosaic`)."""
    return load_det_mosaic("test", n=_count(limit, n))


def motion_test(limit: int | None = None, n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Test clips ``(N, 1, 8, 56, 56)`` and their labels: motion-vivit's eval split."""
    return load_motion("test", n=_count(limit, n))


def motion_pan_test(limit: int | None = None, n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Test clips under camera motion ``(N, 1, 8, 56, 56)`` and their labels (the same garments as
    :func:`motion_test`'s): motion-vivit-pan's eval split."""
    return load_motion("test", n=_count(limit, n), camera=True)


def fmnist_calibration(n: int = 256, batch: int = 64) -> list[tuple[torch.Tensor]]:
    """Normalised batches of the first ``n`` Fashion-MNIST *train* images (disjoint from the eval split)."""
    x, _ = load_fashion_mnist("train")
    x = normalize(x[:n])
    return [(x[i:i + batch],) for i in range(0, x.shape[0], batch)]
