"""Mosaics rendered a batch at a time, on the CPU or the GPU: a stream of training mosaics that never repeats.

A fixed training set is memorised: mosaic-segvit scored mIoU 0.689 on the 96,000 mosaics it had
trained on for 17 epochs, 0.610 on fresh mosaics of the same training items. Drawing new mosaics for
every batch removes that, and rendering them as tensor operations (on the GPU when training there)
costs little beside a training step; nothing is built or cached beforehand.

On the CPU, :func:`render` composes exactly what :func:`prunekit.data.mosaic.make_mosaic` composes from
the same random draws (:func:`sample_params` makes those draws for sample indices); on a GPU, ``sin``
may differ in the last bit, so a pixel may land one grey level off. :func:`draw_params` draws a whole
batch at once from one generator, with the same distributions.

>>> items, labels = torch.full((5, 1, 28, 28), 200, dtype=torch.uint8), torch.arange(5)
>>> x, y = render(draw_params(4, torch.Generator().manual_seed(0), len(items)), items, labels)
>>> x.shape, x.dtype, y.shape, int(y.max()) <= 5
(torch.Size([4, 1, 56, 56]), torch.uint8, torch.Size([4, 56, 56]), True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.data.mosaic import CANVAS, SILHOUETTE_LEVEL
from prunekit.data.texture import sample_generator

__all__ = ["MosaicParams", "draw_params", "sample_params", "render", "instance_map"]

ITEM = 28  # Fashion-MNIST item side
NOISE = CANVAS // 4  # side of the texture's noise grid
MAX_LEVEL = 90.0  # the texture's brightest value, as in :func:`prunekit.data.texture.texture`


@dataclass
class MosaicParams:
    """The random draws behind ``B`` mosaics of ``K`` items.

    ``gratings`` ``(B, 2, 3)``: the texture's two gratings (theta, frequency, phase), each in [0, 1);
    ``noise`` ``(B, 14, 14)``: its noise grid; ``picks`` ``(B, K)``: item indices; ``offsets``
    ``(B, K, 2)``: each item's top-left corner (row, column), later items on top.
    """

    gratings: torch.Tensor
    noise: torch.Tensor
    picks: torch.Tensor
    offsets: torch.Tensor

    def __len__(self) -> int:
        return self.picks.shape[0]


def draw_params(n: int, g: torch.Generator, pool: int, n_items: int = 3) -> MosaicParams:
    """Draws for ``n`` mosaics from one generator ``g``, items taken from a pool of ``pool``."""
    return MosaicParams(torch.rand(n, 2, 3, generator=g), torch.rand(n, NOISE, NOISE, generator=g),
                        torch.randint(0, pool, (n, n_items), generator=g),
                        torch.randint(0, CANVAS - ITEM + 1, (n, n_items, 2), generator=g))


def sample_params(seed: int, split: str, indices: range | list[int], pool: int, n_items: int = 3) -> MosaicParams:
    """The draws of :func:`~prunekit.data.mosaic.make_mosaic` for mosaics ``indices`` of ``(seed, split)``:
    :func:`render` of these gives exactly the mosaics :func:`~prunekit.data.mosaic.load_mosaic` gives."""
    if len(indices) == 0:
        raise ValueError("sample_params: no sample indices given")
    cols = []
    for i in indices:
        g = sample_generator(seed, split, i)
        gratings = torch.stack([torch.rand(3, generator=g) for _ in range(2)])
        noise = torch.rand(NOISE, NOISE, generator=g)
        cols.append((gratings, noise, torch.randint(0, pool, (n_items,), generator=g),
                     torch.randint(0, CANVAS - ITEM + 1, (n_items, 2), generator=g)))
    return MosaicParams(*(torch.stack(c) for c in zip(*cols, strict=True)))


def _textures(p: MosaicParams, device: torch.device) -> torch.Tensor:
    """``(B, H, W)`` float textures, computed as :func:`~prunekit.data.texture.texture` computes one."""
    ar = torch.arange(CANVAS, dtype=torch.float32, device=device)
    ys, xs = torch.meshgrid(ar, ar, indexing="ij")
    # texture() scales its draws as Python floats (math.cos / math.sin in double), then works in float32
    scaled = [[(math.cos(t * math.pi), math.sin(t * math.pi), 0.15 + 0.6 * f, ph * 2 * math.pi)
               for t, f, ph in sample] for sample in p.gratings.tolist()]
    cos, sin, freq, phase = torch.tensor(scaled, dtype=torch.float32).to(device)[..., None, None].unbind(2)
    waves = torch.sin(freq * (xs * cos + ys * sin) + phase)  # (B, 2, H, W)
    out = waves[:, 0] + waves[:, 1]
    noise = nn.functional.interpolate(p.noise.to(device)[:, None], size=(CANVAS, CANVAS), mode="bilinear",
                                      align_corners=False)[:, 0]
    out = (out + 2) / 4 * 0.6 + noise * 0.4
    return out.clamp(0, 1) * MAX_LEVEL


def _layers(p: MosaicParams, items: torch.Tensor, device: torch.device):
    """Per item slot ``k`` (bottom to top): its pixels on the canvas ``(B, H, W)`` float and its silhouette mask."""
    ar = torch.arange(CANVAS, device=device)
    items = items.to(device)
    for k in range(p.picks.shape[1]):
        pick, (y0, x0) = p.picks[:, k].to(device), p.offsets[:, k].to(device).unbind(-1)
        iy, ix = ar - y0[:, None], ar - x0[:, None]  # (B, H), (B, W): item row / column under each pixel
        inside = ((iy >= 0) & (iy < ITEM))[:, :, None] & ((ix >= 0) & (ix < ITEM))[:, None, :]
        img = items[pick[:, None, None], 0, iy.clamp(0, ITEM - 1)[:, :, None], ix.clamp(0, ITEM - 1)[:, None, :]]
        img = img.float()
        yield k, pick, img, inside & (img > SILHOUETTE_LEVEL)


def render(p: MosaicParams, items: torch.Tensor, labels: torch.Tensor, device: str | torch.device | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The mosaics of draws ``p`` from ``items`` ``(N, 1, 28, 28)`` uint8 and their ``labels`` ``(N,)``.

    Returns canvases ``(B, 1, 56, 56)`` uint8 and label maps ``(B, 56, 56)`` int64 (0 background,
    ``1 + class`` on an item), on ``device`` (default: where ``items`` are). For a fast stream keep
    ``items`` and ``labels`` on the training device.
    """
    device = torch.device(device) if device is not None else items.device
    canvas = _textures(p, device)
    target = torch.zeros(canvas.shape, dtype=torch.int64, device=device)
    labels = labels.to(device)
    for _, pick, img, mask in _layers(p, items, device):
        canvas = torch.where(mask, img, canvas)
        target = torch.where(mask, 1 + labels[pick].long()[:, None, None], target)
    return canvas.round().clamp(0, 255).to(torch.uint8)[:, None], target


def instance_map(p: MosaicParams, items: torch.Tensor) -> torch.Tensor:
    """Which item slot each pixel of the mosaics of ``p`` shows: ``(B, 56, 56)`` int64, -1 on background.

    Slot ``k`` is item ``p.picks[:, k]``; with :func:`render`'s label map this gives per-item scores
    (is a garment classified as one, whatever its pixels?).

    >>> items = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    >>> ids = instance_map(draw_params(3, torch.Generator().manual_seed(0), 2), items)
    >>> ids.shape, int(ids.min()) >= -1, int(ids.max()) <= 2
    (torch.Size([3, 56, 56]), True, True)
    """
    ids = torch.full((len(p), CANVAS, CANVAS), -1, dtype=torch.int64, device=items.device)
    for k, _, _, mask in _layers(p, items, items.device):
        ids = torch.where(mask, k, ids)
    return ids
