"""Mosaic detection (``mosaic-det``): Fashion-MNIST garments at varied scales on a textured canvas, one box each.

Each sample is a ``(1, 112, 112)`` uint8 canvas (a ViT at patch 8 sees 196 tokens) holding 2 to
:data:`MAX_ITEMS` garments with their real silhouettes, each resized to a side between 14 and 56 px
(log-uniform), placed at random over a textured background, later ones on top, so earlier ones can
be partly hidden. The target of an item is the box of its **visible** silhouette (what COCO boxes
are), ``(x0, y0, x1, y1)`` in pixels, exclusive at the far end, and its class 0-9. An item with
less than :data:`VISIBLE_MIN` of its silhouette visible gets ``ignore=True``: the metric neither
rewards nor penalises detecting it (COCO's ``iscrowd``). Targets are padded to ``MAX_ITEMS`` rows
with class ``-1``.

Samples are a pure function of (seed, split, index) and are cached like the segmentation mosaics.

>>> items = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
>>> items[0, 0, 4:24, 6:22] = 200
>>> x, boxes, classes, ignore = make_det_mosaic(items, torch.tensor([3]), torch.Generator().manual_seed(0))
>>> x.shape, boxes.shape, int((classes >= 0).sum()) >= 2, set(classes[classes >= 0].tolist())
(torch.Size([1, 112, 112]), torch.Size([6, 4]), True, {3})
"""
from __future__ import annotations

import math
import os

import torch

from prunekit.data.cache import cached
from prunekit.data.fashion_mnist import load_fashion_mnist
from prunekit.data.mosaic import SILHOUETTE_LEVEL
from prunekit.data.parallel import build_stacked
from prunekit.data.texture import sample_generator, texture

__all__ = ["DET_CANVAS", "MAX_ITEMS", "VISIBLE_MIN", "SIZE_RANGE", "make_det_mosaic", "load_det_mosaic",
           "det_targets"]

DET_CANVAS = 112
MAX_ITEMS = 6
VISIBLE_MIN = 0.3        # below this share of its silhouette visible, an item is ignored by the metric
SIZE_RANGE = (14, 56)    # an item's side in px, log-uniform


def _resized(item: torch.Tensor, side: int) -> torch.Tensor:
    """A ``(28, 28)`` uint8 item as a ``(side, side)`` float image (bilinear, antialiased when shrinking)."""
    x = item.float()[None, None]
    return torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                                           antialias=side < item.shape[-1])[0, 0]


def make_det_mosaic(items: torch.Tensor, labels: torch.Tensor, g: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One detection mosaic from a pool of items: ``(canvas (1, H, W) uint8, boxes (MAX_ITEMS, 4) float,
    classes (MAX_ITEMS,) int64, ignore (MAX_ITEMS,) bool)``; unused rows have class -1."""
    canvas = texture(DET_CANVAS, g)
    owner = torch.full((DET_CANVAS, DET_CANVAS), -1, dtype=torch.int64)  # which item shows at each pixel
    n = int(torch.randint(2, MAX_ITEMS + 1, (1,), generator=g))
    picks = torch.randint(0, items.shape[0], (n,), generator=g)
    lo, hi = math.log(SIZE_RANGE[0]), math.log(SIZE_RANGE[1])
    areas = []
    for k in range(n):
        side = int(round(math.exp(lo + (hi - lo) * float(torch.rand(1, generator=g)))))
        img = _resized(items[picks[k], 0], side)
        mask = img > SILHOUETTE_LEVEL
        y0 = int(torch.randint(0, DET_CANVAS - side + 1, (1,), generator=g))
        x0 = int(torch.randint(0, DET_CANVAS - side + 1, (1,), generator=g))
        region = canvas[y0:y0 + side, x0:x0 + side]
        region[mask] = img[mask]
        owner[y0:y0 + side, x0:x0 + side][mask] = k
        areas.append(int(mask.sum()))
    boxes = torch.zeros(MAX_ITEMS, 4)
    classes = torch.full((MAX_ITEMS,), -1, dtype=torch.int64)
    ignore = torch.zeros(MAX_ITEMS, dtype=torch.bool)
    row = 0
    for k in range(n):
        ys, xs = torch.nonzero(owner == k, as_tuple=True)
        if ys.numel() == 0:
            continue  # wholly hidden: not in the targets (nothing of it can be seen)
        boxes[row] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        classes[row] = int(labels[picks[k]])
        ignore[row] = ys.numel() < VISIBLE_MIN * max(1, areas[k])
        row += 1
    return canvas.round().clamp(0, 255).to(torch.uint8).unsqueeze(0), boxes, classes, ignore


def load_det_mosaic(split: str = "test", n: int = 2000, seed: int = 0, data_dir: str | os.PathLike | None = None,
                    start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` deterministic detection mosaics (samples ``start`` to ``start + n - 1``) from the Fashion-MNIST
    ``split``'s items: ``(x (n, 1, 112, 112) uint8, boxes (n, MAX_ITEMS, 4), classes (n, MAX_ITEMS),
    ignore (n, MAX_ITEMS))``; built on ``PRUNEKIT_WORKERS`` processes on the first call, then cached."""
    if start < 0:
        raise ValueError(f"load_det_mosaic: start={start}; the first sample index is 0")

    def build():
        items, labels = load_fashion_mnist(split, data_dir)
        return build_stacked(lambda i: make_det_mosaic(items, labels, sample_generator(seed, split, start + i)), n)
    return cached(f"detmosaic-{split}-{n}-{seed}" + (f"-from{start}" if start else ""), build)


def det_targets(boxes: torch.Tensor, classes: torch.Tensor, ignore: torch.Tensor) -> list[dict]:
    """Per-image target dicts ``{"boxes" (K, 4) xyxy, "labels" (K,), "ignore" (K,)}`` without the padding
    rows (the form :func:`prunekit.zoo.coco_map.coco_map` and torchvision's detectors take)."""
    out = []
    for b, c, i in zip(boxes, classes, ignore, strict=True):
        keep = c >= 0
        out.append({"boxes": b[keep], "labels": c[keep], "ignore": i[keep]})
    return out
