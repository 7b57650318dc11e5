"""Deterministic textured backgrounds for the derived tasks (mosaic segmentation, motion video)."""
from __future__ import annotations

import math

import torch

__all__ = ["texture", "sample_generator"]


def sample_generator(seed: int, split: str, index: int) -> torch.Generator:
    """A generator seeded from (seed, split, index), so sample i never depends on how many are made."""
    salt = {"train": 1, "test": 2}.get(split, 3)
    return torch.Generator().manual_seed((seed * 1_000_003 + salt) * 10_000_019 + index)


def texture(size: int, g: torch.Generator, max_level: float = 90.0) -> torch.Tensor:
    """A ``(size, size)`` float texture in [0, max_level]: two oriented gratings plus smoothed noise."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    out = torch.zeros(size, size)
    for _ in range(2):
        theta, freq, phase = torch.rand(3, generator=g).tolist()
        theta, freq, phase = theta * math.pi, 0.15 + 0.6 * freq, phase * 2 * math.pi
        out += torch.sin(freq * (xs * math.cos(theta) + ys * math.sin(theta)) + phase)
    noise = torch.rand(1, 1, size // 4, size // 4, generator=g)
    noise = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear",
                                            align_corners=False)[0, 0]
    out = (out + 2) / 4 * 0.6 + noise * 0.4
    return out.clamp(0, 1) * max_level
