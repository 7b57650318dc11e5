"""DynamicViT training on the one trainer: the scorers at ``lr``, the backbone at ``backbone_lr``.

The loss is :func:`prunekit.tokens.dynamic_train.dynamic_objective` (cross-entropy, KL and token
distillation from the dense teacher, keep-ratio); :func:`prunekit.train.fit` supplies the schedule,
clipping, checkpoints and DDP (the model is wrapped so that DDP sees ``forward_with_masks``).

>>> import torch
>>> from timm.models.vision_transformer import VisionTransformer
>>> from prunekit.tokens import DynamicViT
>>> vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2, num_classes=3)
>>> dyn = DynamicViT(vit, stages=(1,), keep=0.5)
>>> batches = [(torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,)))] * 2
>>> hist = fit_dynamic(dyn, batches, epochs=1, progress=False)
>>> len(hist), sorted(hist[-1])
(2, ['ce', 'kept', 'kept1', 'kl', 'loss', 'ratio', 'tokens'])
>>> hist.result.steps     # the run's FitResult
2
"""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from prunekit.tokens.dynamic import DynamicViT
from prunekit.tokens.dynamic_train import WEIGHTS, dynamic_objective
from prunekit.train.loop import FitResult

__all__ = ["fit_dynamic", "History"]


class History(list):
    """The per-step loss parts of a :func:`fit_dynamic` run; ``result`` is its :class:`FitResult`
    (steps done, a resumed run's starting step, timing)."""

    result: FitResult | None = None


class _WithMasks(nn.Module):
    """``forward`` = the DynamicViT's ``forward_with_masks``, so DDP's hooks run on the training path."""

    def __init__(self, dyn: DynamicViT):
        super().__init__()
        self.dyn = dyn

    def forward(self, x):
        return self.dyn.forward_with_masks(x)


def fit_dynamic(model: DynamicViT, batches: Any, *, epochs: float = 1, lr: float = 1e-3, backbone_lr: float = 1e-5,
                teacher: nn.Module | None = None, weights: dict[str, float] = WEIGHTS, progress: bool = True,
                **train_kw) -> History:
    """Train ``model``'s scorers (``lr``) and backbone (``backbone_lr``; 0 freezes it) on ``batches`` of
    ``(x, y)`` (any :func:`prunekit.train.fit` data form) for ``epochs``; the teacher defaults to a frozen
    copy of the backbone as it was. ``train_kw`` are further :class:`prunekit.train.TrainConfig` fields.
    Returns the per-step loss parts (``.result`` holds the run's :class:`FitResult`); the model is
    left in eval mode. How each token's keep decision is drawn in training is ``model.sampling``."""
    from prunekit.train.loop import fit
    given = teacher
    teacher = teacher if teacher is not None else copy.deepcopy(model.vit)
    teacher_state = [p.requires_grad for p in teacher.parameters()], teacher.training
    teacher.eval().requires_grad_(False)
    trainable = {name: p.requires_grad for name, p in model.vit.named_parameters()}
    if backbone_lr <= 0:
        model.vit.requires_grad_(False)
    history = History()
    prefix, targets = model.num_prefix_tokens, model.keep_targets()

    def loss(wrapped, batch):
        x, y = batch[0], batch[1]
        value, parts = dynamic_objective(wrapped(x), y, x, teacher, prefix, targets, weights)
        history.append(parts)
        return value, parts

    train_kw.setdefault("weight_decay", 0.05)
    train_kw.setdefault("clip_grad", None)
    train_kw.setdefault("desc", "DynamicViT")
    try:
        history.result = fit(_WithMasks(model), batches, epochs=epochs, lr=lr, loss=loss, progress=progress,
                             lr_scales={"dyn.vit.": backbone_lr / lr if backbone_lr > 0 else 0.0}, **train_kw)
    finally:
        model.eval()
        for name, p in model.vit.named_parameters():  # as the caller had them (a frozen backbone stays frozen)
            p.requires_grad_(trainable[name])
        if given is not None:  # a teacher the caller gave is handed back as it came
            for p, flag in zip(given.parameters(), teacher_state[0], strict=True):
                p.requires_grad_(flag)
            given.train(teacher_state[1])
    return history
