"""Mosaic segmentation: Fashion-MNIST items with their real silhouettes on a textured canvas.

Each sample is a ``(1, 56, 56)`` uint8 canvas holding ``items`` garments at random places (later
ones on top) over a textured background, and a ``(56, 56)`` int64 label map: 0 for background,
``1 + class`` for a pixel of an item. Samples are a pure function of (seed, split, index) and are
cached under ``PRUNEKIT_CACHE`` (default ``~/.cache/prunekit``).

>>> x, y = load_mosaic("test", n=4)   # doctest: +SKIP
>>> x.shape, y.shape, int(y.max()) <= 10  # doctest: +SKIP
(torch.Size([4, 1, 56, 56]), torch.Size([4, 56, 56]), True)
"""
from __future__ import annotations

import os

import torch

from prunekit.data.cache import cached
from prunekit.data.fashion_mnist import load_fashion_mnist
from prunekit.data.parallel import build_stacked
from prunekit.data.texture import sample_generator, texture

__all__ = ["CANVAS", "NUM_SEG_CLASSES", "make_mosaic", "load_mosaic", "on_texture"]

CANVAS = 56
NUM_SEG_CLASSES = 11
SILHOUETTE_LEVEL = 8  # item pixels brighter than this belong to the garment


def _paste(region: torch.Tensor, item: torch.Tensor, mask: torch.Tensor) -> None:
    """Paste the garment's silhouette (``mask``) of ``item`` into ``region`` in place."""
    region[mask] = item[mask]


def on_texture(items: torch.Tensor, g: torch.Generator, bank: int = 256) -> torch.Tensor:
    """Fashion-MNIST ``items`` ``(N, 1, 28, 28)`` uint8 pasted on random crops of mosaic textures.

    The pre-training images of the segmentation encoder: single garments composed exactly as in a
    mosaic (silhouette over texture), so the classifier learns items in the mosaic's domain.

    >>> x = on_texture(torch.full((2, 1, 28, 28), 200, dtype=torch.uint8), torch.Generator().manual_seed(0))
    >>> x.shape, x.dtype, int(x.min())
    (torch.Size([2, 1, 28, 28]), torch.uint8, 200)
    """
    textures = torch.stack([texture(CANVAS, g) for _ in range(min(bank, items.shape[0]))])
    pick = torch.randint(0, textures.shape[0], (items.shape[0],), generator=g)
    offs = torch.randint(0, CANVAS - 28 + 1, (items.shape[0], 2), generator=g)
    out = torch.empty(items.shape, dtype=torch.float32)
    for i in range(items.shape[0]):
        y0, x0 = offs[i].tolist()
        region = textures[pick[i], y0:y0 + 28, x0:x0 + 28].clone()
        item = items[i, 0].float()
        _paste(region, item, item > SILHOUETTE_LEVEL)
        out[i, 0] = region
    return out.round().clamp(0, 255).to(torch.uint8)


def make_mosaic(items: torch.Tensor, labels: torch.Tensor, g: torch.Generator, n_items: int = 3
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose one mosaic from a pool of items; returns (canvas uint8 (1,H,W), label map (H,W))."""
    canvas = texture(CANVAS, g)
    target = torch.zeros(CANVAS, CANVAS, dtype=torch.int64)
    picks = torch.randint(0, items.shape[0], (n_items,), generator=g)
    offs = torch.randint(0, CANVAS - 28 + 1, (n_items, 2), generator=g)
    for k in range(n_items):
        item = items[picks[k], 0].float()
        mask = item > SILHOUETTE_LEVEL
        y0, x0 = offs[k].tolist()
        _paste(canvas[y0:y0 + 28, x0:x0 + 28], item, mask)
        target[y0:y0 + 28, x0:x0 + 28][mask] = 1 + int(labels[picks[k]])
    return canvas.round().clamp(0, 255).to(torch.uint8).unsqueeze(0), target


def load_mosaic(split: str = "test", n: int = 2000, seed: int = 0, n_items: int = 3,
                data_dir: str | os.PathLike | None = None, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` deterministic mosaics from the Fashion-MNIST ``split``'s items: samples ``start`` to ``start + n - 1``.

    Sample ``i`` is the same whatever ``n`` and ``start`` are, so ``start`` past a training set's size
    gives mosaics that set never held. A first call builds them (on ``PRUNEKIT_WORKERS`` processes,
    :mod:`prunekit.data.parallel`) and caches them, the label maps as uint8 (8x less disk than int64);
    they come back as int64, as losses and metrics want.
    """
    def build():
        items, labels = load_fashion_mnist(split, data_dir)
        x, y = build_stacked(lambda i: make_mosaic(items, labels, sample_generator(seed, split, start + i), n_items), n)
        return x, y.to(torch.uint8)
    if start < 0:
        raise ValueError(f"load_mosaic: start={start}; the first sample index is 0")
    x, y = cached(f"mosaic-{split}-{n}-{seed}-{n_items}" + (f"-from{start}" if start else ""), build)
    return x, y.long()
