"""Probe for the fmnist-vit training route: which 49 -> 196-token transfer keeps more accuracy?

A: patch 4 at 28 px (49 tokens), PI-resized to patch 2 (timm's resample_patch_embed).
B: patch 2 at 14 px (2x average-pooled input, 49 tokens), only the position embedding resampled
   to 28 px (FixRes-style). Each trains one epoch at 49 tokens, then 150 steps at 196 tokens.
Also prints the shipped checkpoint's accuracy on 2,000 training and 2,000 test images (underfitting?).

    .venv/bin/python scripts/probe_vit_transfer.py   # ~35 min on 2 cores; prints one JSON line
"""
import json

import torch
from torch import nn

from prunekit.data import load_fashion_mnist
from prunekit.zoo import load, models
from prunekit.zoo.registry import top1
from prunekit.zoo.train import _loader, fit
from prunekit.zoo.transfer import transfer_vit

EPOCHS, FT_STEPS = 1.0, 150


def accuracy(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return round(top1(m, x, y), 4)


def main() -> None:
    torch.set_num_threads(2)
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    xte, yte = xte[:2000], yte[:2000]
    shipped = load("fmnist-vit").model
    res = {"shipped_train2000": accuracy(shipped, xtr[:2000], ytr[:2000]),
           "shipped_test2000": accuracy(shipped, xte, yte)}
    ft = _loader(xtr[:FT_STEPS * 64], ytr[:FT_STEPS * 64], 64, True)
    routes = {"A": (models.build_vit(4), lambda m: m),
              "B": (nn.Sequential(nn.AvgPool2d(2), models.vit(14, 2, 96, 12, 4, 10)), lambda m: m[1])}
    for key, (coarse, inner) in routes.items():
        fit(coarse, _loader(xtr, ytr, 128, True), EPOCHS, 1e-3, 60000 // 128, 0, desc=f"{key} 49 tokens")
        res[f"{key}_49tok"] = accuracy(coarse, xte, yte)
        fine = models.build_vit(2)
        transfer_vit(inner(coarse).state_dict(), fine, skip=())
        res[f"{key}_196_at_transfer"] = accuracy(fine, xte, yte)
        fit(fine, ft, 1, 2.5e-4, FT_STEPS, 1, desc=f"{key} 196 tokens")
        res[f"{key}_196_after_ft"] = accuracy(fine, xte, yte)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
