"""Motion video: a Fashion-MNIST item moving over a textured background, with a still or a moving camera.

Each clip is ``(1, FRAMES, 56, 56)`` uint8 (channels, time, height, width); the label is the item's
class. With a still camera (:func:`make_clip`) the background never changes across frames, so most
space-time tokens are redundant, as in real video. With camera motion (:func:`make_pan_clip`, the clips
of ``motion-vivit-pan``) the background pans, zooms slightly and shakes, so a location's tokens no
longer repeat over time, while the item still moves on its own path. Clips are a pure function of
(seed, split, index) and are cached.

>>> x, y = load_motion("test", n=2)   # doctest: +SKIP
>>> x.shape                            # doctest: +SKIP
torch.Size([2, 1, 8, 56, 56])
"""
from __future__ import annotations

import os

import torch

from prunekit.data.cache import cached
from prunekit.data.fashion_mnist import load_fashion_mnist
from prunekit.data.parallel import build_stacked
from prunekit.data.texture import sample_generator, texture

__all__ = ["FRAMES", "FRAME_SIZE", "make_clip", "make_pan_clip", "load_motion", "motion_items"]

FRAMES = 8
FRAME_SIZE = 56
PAN_MARGIN = 16      # texture around the first view, in pixels, that the camera can move into
MAX_PAN = 1.5        # pixels per frame, each axis
MAX_ZOOM = 0.08      # scale change over the clip, either way
MAX_JITTER = 1.0     # shake, pixels per frame, each axis


def make_clip(item: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One clip: ``item`` (1,28,28) uint8 moves in a straight line, bouncing off the edges."""
    bg = texture(FRAME_SIZE, g)
    return _paste_item([bg] * FRAMES, item, g)


def make_pan_clip(item: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One clip under camera motion: the view of a larger texture pans at a constant random velocity (up to
    ``MAX_PAN`` px per frame), zooms linearly to a random scale (up to ``MAX_ZOOM`` either way) and shakes
    (``MAX_JITTER`` px per frame), sampled bilinearly; ``item`` moves on its own path as in :func:`make_clip`.

    >>> import torch
    >>> clip = make_pan_clip(torch.zeros(1, 28, 28, dtype=torch.uint8), torch.Generator().manual_seed(0))
    >>> clip.shape, bool((clip[0, 0] != clip[0, -1]).float().mean() > 0.5)   # the background moved
    (torch.Size([1, 8, 56, 56]), True)
    """
    size = FRAME_SIZE + 2 * PAN_MARGIN
    bg = texture(size, g)
    pan = (torch.rand(2, generator=g) * 2 - 1) * MAX_PAN
    zoom = 1 + (float(torch.rand(1, generator=g)) * 2 - 1) * MAX_ZOOM
    shake = (torch.rand(FRAMES, 2, generator=g) * 2 - 1) * MAX_JITTER
    t = torch.arange(FRAMES, dtype=torch.float32) - (FRAMES - 1) / 2
    centre = pan[None] * t[:, None] + shake                      # (FRAMES, 2) px from the texture's centre
    scale = 1 + (zoom - 1) * torch.arange(FRAMES, dtype=torch.float32) / (FRAMES - 1)
    theta = torch.zeros(FRAMES, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = FRAME_SIZE / size / scale
    theta[:, :, 2] = centre / (size / 2)
    grid = torch.nn.functional.affine_grid(theta, [FRAMES, 1, FRAME_SIZE, FRAME_SIZE], align_corners=False)
    views = torch.nn.functional.grid_sample(bg.expand(FRAMES, 1, size, size), grid, mode="bilinear",
                                            padding_mode="border", align_corners=False)[:, 0]
    return _paste_item(list(views), item, g)


def _paste_item(backgrounds: list[torch.Tensor], item: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``item`` pasted over each background frame, moving in a straight line and bouncing off the edges."""
    span = FRAME_SIZE - 28
    pos = torch.rand(2, generator=g) * span
    vel = (torch.rand(2, generator=g) * 2 - 1) * 4.0
    img = item[0].float()
    mask = img > 8
    frames = []
    for bg in backgrounds:
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
                data_dir: str | os.PathLike | None = None, camera: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` deterministic clips built from the items of the Fashion-MNIST ``split``; ``camera``: with camera
    motion (:func:`make_pan_clip`; the same items as without).

    A first call builds them (on ``PRUNEKIT_WORKERS`` processes, :mod:`prunekit.data.parallel`) and caches them.
    """
    make = make_pan_clip if camera else make_clip

    def build():
        items, labels = load_fashion_mnist(split, data_dir)

        def one(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            k, g = _pick(items.shape[0], seed, split, i)
            return make(items[k], g), labels[k]
        return build_stacked(one, n)
    return cached(f"motion-{'pan-' if camera else ''}{split}-{n}-{seed}", build)


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
