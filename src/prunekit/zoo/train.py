"""Training recipes for the reference models: CPU-friendly, seeded, with a progress bar.

``prunekit zoo train NAME`` runs the recipe and writes ``checkpoints/NAME.safetensors`` plus a
manifest entry (metric, seed, command, sha256, route). The ViTs take the cheaper route the
Foundation issue allows: most epochs at 49 tokens (a coarser patch), then a fine-tune at 196 tokens
after resampling the patch embedding (timm ``resample_patch_embed``, FlexiViT's PI-resize) and the
position embedding (``resample_abs_pos_embed``). The route is recorded in the manifest.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch import nn
from tqdm import tqdm

from prunekit.data import load_fashion_mnist, load_mosaic, load_motion, normalize
from prunekit.zoo import models
from prunekit.zoo.store import save_checkpoint

__all__ = ["train_model", "fit", "RECIPES", "SUBSET"]

SUBSET = 500  # the fixed eval subset whose metric the tests check

Batches = Callable[[torch.Generator], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def _augment(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shift (pad + crop) and horizontal flip, the same for a whole sample (works for video)."""
    n = x.shape[0]
    h, w = x.shape[-2:]
    xp = nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
    x = xp[..., dy:dy + h, dx:dx + w]
    flip = torch.rand(n, generator=g) < 0.5
    x[flip] = x[flip].flip(-1)
    return x


def _loader(x: torch.Tensor, y: torch.Tensor, batch: int, augment: bool, seg: bool = False) -> Batches:
    def batches(g: torch.Generator):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            xb, yb = normalize(x[idx]), y[idx]
            if augment and not seg:
                xb = _augment(xb, g)
            elif augment and seg:  # flip image and mask together
                flip = torch.rand(len(idx), generator=g) < 0.5
                xb[flip], yb = xb[flip].flip(-1), yb.clone()
                yb[flip] = yb[flip].flip(-1)
            yield xb, yb
    return batches


@dataclass
class FitResult:
    steps: int
    seconds: float
    last_loss: float


def fit(model: nn.Module, batches: Batches, epochs: float, lr: float, steps_per_epoch: int,
        seed: int = 0, weight_decay: float = 0.05, label_smoothing: float = 0.1, desc: str = "train"
        ) -> FitResult:
    """AdamW with linear warm-up and cosine decay; ``epochs`` may be fractional."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "pos_embed" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    total = max(1, int(epochs * steps_per_epoch))
    warm = min(200, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    model.train()
    step, t0, loss_ema = 0, time.time(), float("nan")
    bar = tqdm(total=total, desc=desc, file=sys.stderr, mininterval=5)
    while step < total:
        for xb, yb in batches(g):
            out = model(xb)
            loss = nn.functional.cross_entropy(out, yb, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            loss_ema = loss.item() if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}")
            if step >= total:
                break
    bar.close()
    model.eval()
    return FitResult(step, time.time() - t0, loss_ema)


def to_finer_patches(coarse: nn.Module, fine: nn.Module) -> nn.Module:
    """Copy a ViT trained with a coarse patch into ``fine`` (a smaller patch, more tokens).

    The patch embedding is PI-resized (``resample_patch_embed``) and the position embedding is
    interpolated to the new grid (``resample_abs_pos_embed``); everything else is copied as is.
    """
    enc_c = getattr(coarse, "encoder", coarse)
    enc_f = getattr(fine, "encoder", fine)
    state = coarse.state_dict()
    prefix = "encoder." if enc_c is not coarse else ""
    w = state[prefix + "patch_embed.proj.weight"]
    state[prefix + "patch_embed.proj.weight"] = resample_patch_embed(w, list(enc_f.patch_embed.patch_size))
    state[prefix + "pos_embed"] = resample_abs_pos_embed(
        state[prefix + "pos_embed"], new_size=list(enc_f.patch_embed.grid_size),
        old_size=list(enc_c.patch_embed.grid_size), num_prefix_tokens=enc_c.num_prefix_tokens)
    fine.load_state_dict(state)
    return fine


def _fmnist(n: int | None = None):
    x, y = load_fashion_mnist("train")
    return (x[:n], y[:n]) if n else (x, y)


def recipe_resnet(seed: int, quick: bool, start_from: dict | None = None) -> tuple[nn.Module, str]:
    """3 epochs at lr 3e-3, 1 at lr 1e-3 (shift+flip augmentation), then 1 at lr 3e-4 without augmentation.

    Each stage gets a fresh AdamW + cosine schedule. ``start_from``: the state after stages 1-2 (skips
    them; stage 3 then gives the same model as a full run).
    """
    x, y = _fmnist(2048 if quick else None)
    model = models.build_resnet()
    spe = x.shape[0] // 128
    e1, e2, e3 = (0.2, 0.1, 0.1) if quick else (3, 1, 1)
    if start_from is None:
        fit(model, _loader(x, y, 128, True), e1, 3e-3, spe, seed, 5e-4, desc="fmnist-resnet stage 1")
        fit(model, _loader(x, y, 128, True), e2, 1e-3, spe, seed + 1, 5e-4, desc="fmnist-resnet stage 2")
    else:
        model.load_state_dict(start_from)
    fit(model, _loader(x, y, 128, False), e3, 3e-4, spe, seed + 2, 5e-4, desc="fmnist-resnet stage 3")
    return model, (f"{e1} epochs at lr 3e-3 then {e2} at lr 1e-3 (shift+flip augmentation), then {e3} at "
                   "lr 3e-4 without augmentation; batch 128, AdamW + cosine per stage"
                   + (" (stage 3 resumed from the stage-2 checkpoint)" if start_from else ""))


def _two_stage(name: str, coarse: nn.Module, fine: nn.Module, x, y, seg: bool, e1: float, n2: int, lr: float,
               seed: int) -> tuple[nn.Module, str]:
    spe = x.shape[0] // 128
    fit(coarse, _loader(x, y, 128, True, seg), e1, lr, spe, seed, desc=f"{name} 49 tokens")
    fine = to_finer_patches(coarse, fine)
    fit(fine, _loader(x[:n2], y[:n2], 64, True, seg), 1, lr / 4, n2 // 64, seed + 1, desc=f"{name} 196 tokens")
    route = (f"{e1} epochs on {x.shape[0]} samples at 49 tokens (coarse patch), then PI-resized patch embed + "
             f"resampled pos embed and 1 epoch on {n2} samples at 196 tokens")
    return fine, route


def recipe_vit(seed: int, quick: bool) -> tuple[nn.Module, str]:
    x, y = _fmnist(1024 if quick else None)
    return _two_stage("fmnist-vit", models.build_vit(4), models.build_vit(2), x, y, False,
                      0.1 if quick else 4, 256 if quick else 9600, 1e-3, seed)


def init_encoder_from_vit(encoder: nn.Module, vit_state: dict) -> nn.Module:
    """Initialise a segmentation encoder from the image classifier ``fmnist-vit`` (ImageNet-style transfer).

    Blocks, class token, position embedding (same 14x14 grid) and final norm are copied; the patch
    embedding is PI-resized to the encoder's coarser patch (2 -> 4 px on the 2x larger canvas).
    """
    own = encoder.state_dict()
    for k, v in vit_state.items():
        if k == "patch_embed.proj.weight":
            own[k] = resample_patch_embed(v, list(encoder.patch_embed.patch_size))
        elif k in own and own[k].shape == v.shape and not k.startswith("head"):
            own[k] = v
    encoder.load_state_dict(own)
    return encoder


def recipe_segvit(seed: int, quick: bool) -> tuple[nn.Module, str]:
    from prunekit.zoo.store import load_state
    x, y = load_mosaic("train", n=512 if quick else 16000, seed=seed)
    model = models.build_segvit(4)
    try:
        init_encoder_from_vit(model.encoder, load_state("fmnist-vit"))
        init = "encoder initialised from fmnist-vit (first 8 blocks; patch embed PI-resized 2->4)"
    except FileNotFoundError:
        if not quick:
            raise
        init = "random init (quick run without fmnist-vit)"
    epochs = 0.1 if quick else 2
    fit(model, _loader(x, y, 64, True, seg=True), epochs, 5e-4, x.shape[0] // 64, seed, desc="mosaic-segvit")
    return model, f"{init}; {epochs} epochs on {x.shape[0]} mosaics at 196 tokens, batch 64, AdamW lr 5e-4"


def recipe_vivit(seed: int, quick: bool) -> tuple[nn.Module, str]:
    x, y = load_motion("train", n=512 if quick else 16000, seed=seed)
    model = models.build_vivit()
    epochs = 0.1 if quick else 3
    fit(model, _loader(x, y, 64, True), epochs, 1e-3, x.shape[0] // 64, seed, desc="motion-vivit")
    return model, f"{epochs} epochs on {x.shape[0]} clips at 196 tokens, batch 64"


RECIPES = {"fmnist-resnet": recipe_resnet, "fmnist-vit": recipe_vit,
           "mosaic-segvit": recipe_segvit, "motion-vivit": recipe_vivit}


def train_model(name: str, seed: int = 0, quick: bool = False, out_dir=None, threads: int | None = None,
                command: str = "", **recipe_kwargs) -> dict:
    """Train zoo model ``name``, evaluate it on the full eval split, write checkpoint + manifest entry."""
    from prunekit.zoo.registry import evaluate_model
    if name not in RECIPES:
        raise KeyError(f"no training recipe for {name!r}; choose one of {sorted(RECIPES)}")
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    model, route = RECIPES[name](seed, quick, **recipe_kwargs)
    minutes = (time.time() - t0) / 60
    metric = evaluate_model(name, model, limit=256 if quick else None)
    entry = {"metric": metric, "metric_subset": evaluate_model(name, model, limit=SUBSET),
             "subset_limit": SUBSET, "seed": seed, "route": route, "train_minutes": round(minutes, 1),
             "threads": torch.get_num_threads(), "command": command or f"prunekit zoo train {name}",
             "params": sum(p.numel() for p in model.parameters())}
    return save_checkpoint(name, model, entry, out_dir=out_dir)
