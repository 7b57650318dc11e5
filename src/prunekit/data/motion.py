"""Motion video: a Fashion-MNIST item moving over a static textured background.

Each clip is ``(1, FRAMES, 56, 56)`` uint8 (channels, time, height, width); the label is the item's
class. The background never changes across frames, so most space-time tokens are redundant, as in
real video. Clips are a pure function of (seed, split, index) and are cached.

>>> x, y = load_motion("test", n=2)   # doctest: +SKIP
>>> x.shape
torch.Size([2, 1, 8, 56, 56])
"""
from __future__ import annotations

import os

import torch

from prunekit.data.cache import cached
from prunekit.data.fashion_mnist import load_fashion_mnist
from prunekit.data.parallel import build_stacked
from prunekit.data.texture import sample_generator, texture

__all__ = ["FRAMES", "FRAME_SIZE", "make_clip", "load_motion", "motion_items"]

FRAMES = 8
FRAME_SIZE = 56


def make_clip(item: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One clip: ``item`` (1,28,28) uint8 moves in a straight line, bouncing off the edges."""
    bg = texture(FRAME_SIZE, g)
    span = FRAME_SIZE - 28
    pos = torch.rand(2, generator=g) * span
    vel = (torch.rand(2, generator=g) * 2 - 1) * 4.0
    img = item[0].float()
    mask = img > 8
    frames = []
    for _ in range(FRAMES):
        f = bg.clone()
        y0, x0 = (int(round(v)) for v in pos.tolist())
        f[y0:y0 + 28, x0:x0 + 28][mask] = img[mask]
        frames.append(f)
        pos = pos + vel
        for d in range(2):  # bounce
            if pos[d] < 0 or pos[d] > span:
                vel[d] = -vel[d]
                pos[d] = pos[d].clamp(0, span)
    return torch.stack(frames).round().clamp(0, 255).to(torch.uint8).unsqueeze(0)


def load_motion(split: str = "test", n: int = 2000, seed: int = 0,
                data_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` deterministic clips built from the items of the Fashion-MNIST ``split``.

    A first call builds them (on ``PRUNEKIT_WORKERS`` processes, :mod:`prunekit.data.parallel`) and caches them.
    """
    def build():
        items, labels = load_fashion_mnist(split, data_dir)

        def one(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            k, g = _pick(items.shape[0], seed, split, i)
            return make_clip(items[k], g), labels[k]
        return build_stacked(one, n)
    return cached(f"motion-{split}-{n}-{seed}", build)


def _pick(pool: int, seed: int, split: str, i: int) -> tuple[int, torch.Generator]:
    """Clip ``i``'s item index in the split, and the generator (advanced past the draw) that builds the clip."""
    g = sample_generator(seed, split, i)
    return int(torch.randint(0, pool, (1,), generator=g)), g


def motion_items(split: str = "test", n: int = 2000, seed: int = 0,
                 data_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """The Fashion-MNIST index of the item in each of the ``n`` clips :func:`load_motion` builds.

    Lets a recipe look up per-item data, e.g. a teacher's logits for the clean 28 px garment.

    >>> k = motion_items("test", n=4)   # doctest: +SKIP
    >>> bool((load_fashion_mnist("test")[1][k] == load_motion("test", n=4)[1]).all())   # doctest: +SKIP
    True
    """
    pool = load_fashion_mnist(split, data_dir)[0].shape[0]
    return torch.tensor([_pick(pool, seed, split, i)[0] for i in range(n)])
