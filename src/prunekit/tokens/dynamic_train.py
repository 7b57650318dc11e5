"""Training a :class:`~prunekit.tokens.dynamic.DynamicViT`: its losses and a small trainer.

The objective of DynamicViT (Rao et al., NeurIPS 2021), with the dense model as teacher:

- cross-entropy on the labels;
- ``kl``: KL divergence from the teacher's class distribution;
- ``tokens``: mean squared error between the student's and the teacher's final tokens, on the
  patch tokens the student still keeps (what is kept must still say what the dense model says);
- ``ratio``: after each stage, the squared gap between the share of tokens kept and its target
  ``keep**s``, so the scorers learn to keep the share that inference will keep.

The backbone is fine-tuned too, at a lower learning rate (``backbone_lr``; 0 freezes it).

>>> import torch
>>> from timm.models.vision_transformer import VisionTransformer
>>> from prunekit.tokens.dynamic import DynamicViT
>>> vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2, num_classes=3)
>>> dyn = DynamicViT(vit, stages=(1,), keep=0.5)
>>> batches = [(torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,)))] * 2
>>> hist = fit_dynamic(dyn, batches, epochs=1, progress=False)
>>> sorted(hist[-1])
['ce', 'kept', 'kl', 'loss', 'ratio', 'tokens']
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from tqdm import tqdm

from prunekit.tokens.dynamic import DynamicViT

__all__ = ["WEIGHTS", "dynamic_loss", "fit_dynamic"]

WEIGHTS = {"kl": 0.5, "tokens": 0.5, "ratio": 2.0}  # the paper's weights beside cross-entropy (1)


def dynamic_loss(model: DynamicViT, x: torch.Tensor, y: torch.Tensor, teacher: nn.Module,
                 weights: dict[str, float] = WEIGHTS) -> tuple[torch.Tensor, dict[str, float]]:
    """The DynamicViT objective on one batch (``model`` in training mode); returns the loss and its parts."""
    logits, tokens, masks = model.forward_with_masks(x)
    with torch.no_grad():
        t_tokens = teacher.forward_features(x)
        t_logits = teacher.forward_head(t_tokens)
    p = model.num_prefix_tokens
    ce = nn.functional.cross_entropy(logits, y)
    kl = nn.functional.kl_div(logits.log_softmax(-1), t_logits.log_softmax(-1), log_target=True,
                              reduction="batchmean")
    final = masks[-1][..., None]
    err = (tokens[:, p:] - t_tokens[:, p:]).pow(2) * final
    tok = err.sum() / (final.sum() * tokens.shape[-1]).clamp_min(1.0)
    ratio = sum(((m.mean(1) - target) ** 2).mean() for m, target in zip(masks, model.keep_targets(), strict=True))
    loss = ce + weights["kl"] * kl + weights["tokens"] * tok + weights["ratio"] * ratio
    parts = {k: float(v.detach()) for k, v in
             {"loss": loss, "ce": ce, "kl": kl, "tokens": tok, "ratio": ratio, "kept": masks[-1].mean()}.items()}
    return loss, parts


def fit_dynamic(model: DynamicViT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, epochs: int = 1,
                lr: float = 1e-3, backbone_lr: float = 1e-5, teacher: nn.Module | None = None,
                weights: dict[str, float] = WEIGHTS, progress: bool = True) -> list[dict[str, float]]:
    """Train ``model``'s scorers (``lr``) and backbone (``backbone_lr``) on ``batches`` of ``(x, y)`` for
    ``epochs`` passes; the teacher defaults to a frozen copy of the backbone as it was. Returns the
    per-step loss parts; the model is left in eval mode."""
    teacher = teacher if teacher is not None else copy.deepcopy(model.vit)
    teacher.eval().requires_grad_(False)
    trainable = {name: p.requires_grad for name, p in model.vit.named_parameters()}
    groups = [{"params": list(model.scorers.parameters()), "lr": lr}]
    if backbone_lr > 0:
        groups.append({"params": [p for p in model.vit.parameters() if p.requires_grad], "lr": backbone_lr})
    else:
        model.vit.requires_grad_(False)
    opt = torch.optim.AdamW(groups, weight_decay=0.05)
    batches = list(batches)
    steps = epochs * len(batches)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                pct_start=0.1)
    history = []
    model.train()
    try:
        with tqdm(total=steps, desc="DynamicViT", disable=not progress) as bar:
            for _ in range(epochs):
                for x, y in batches:
                    loss, parts = dynamic_loss(model, x, y, teacher, weights)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    history.append(parts)
                    bar.set_postfix(loss=f"{parts['loss']:.3f}", kept=f"{parts['kept']:.2f}")
                    bar.update(1)
    finally:
        model.eval()
        for name, p in model.vit.named_parameters():  # as the caller had them (a frozen backbone stays frozen)
            p.requires_grad_(trainable[name])
    return history
