"""The training objective of a :class:`~prunekit.tokens.dynamic.DynamicViT` (trained by
:func:`prunekit.train.fit_dynamic`, on the one trainer).

The objective of DynamicViT (Rao et al., NeurIPS 2021), with the dense model as teacher:

- cross-entropy on the labels;
- ``kl``: KL divergence from the teacher's class distribution;
- ``tokens``: mean squared error between the student's and the teacher's final tokens, on the
  patch tokens the student still keeps (what is kept must still say what the dense model says);
- ``ratio``: after each stage, the squared gap between the share of tokens kept and its target
  ``keep**s``, so the scorers learn to keep the share that inference will keep. The parts report
  the share kept after each stage (``kept1``, ``kept2``, ...) and after the last (``kept``).

The backbone is fine-tuned too, at a lower learning rate (``backbone_lr``; 0 freezes it).

>>> import torch
>>> from timm.models.vision_transformer import VisionTransformer
>>> from prunekit.tokens.dynamic import DynamicViT
>>> vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2, num_classes=3)
>>> dyn = DynamicViT(vit, stages=(1,), keep=0.5)
>>> batches = [(torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,)))] * 2
>>> loss, parts = dynamic_loss(dyn.train(), *batches[0], teacher=vit.eval())
>>> sorted(parts)
['ce', 'kept', 'kept1', 'kl', 'loss', 'ratio', 'tokens']
"""
from __future__ import annotations

import torch
from torch import nn

from prunekit.tokens.dynamic import DynamicViT

__all__ = ["WEIGHTS", "dynamic_loss", "dynamic_objective"]

WEIGHTS = {"kl": 0.5, "tokens": 0.5, "ratio": 2.0}  # the paper's weights beside cross-entropy (1)


def dynamic_loss(model: DynamicViT, x: torch.Tensor, y: torch.Tensor, teacher: nn.Module,
                 weights: dict[str, float] = WEIGHTS) -> tuple[torch.Tensor, dict[str, float]]:
    """The DynamicViT objective on one batch (``model`` in training mode); returns the loss and its parts."""
    return dynamic_objective(model.forward_with_masks(x), y, x, teacher, model.num_prefix_tokens,
                             model.keep_targets(), weights)


def dynamic_objective(outputs: tuple, y: torch.Tensor, x: torch.Tensor, teacher: nn.Module, prefix: int,
                      targets: list[float], weights: dict[str, float] = WEIGHTS) -> tuple[torch.Tensor, dict]:
    """:func:`dynamic_loss` from ``outputs = (logits, tokens, masks)`` of ``forward_with_masks``."""
    logits, tokens, masks = outputs
    with torch.no_grad():
        t_tokens = teacher.forward_features(x)
        t_logits = teacher.forward_head(t_tokens)
    p = prefix
    ce = nn.functional.cross_entropy(logits, y)
    kl = nn.functional.kl_div(logits.log_softmax(-1), t_logits.log_softmax(-1), log_target=True,
                              reduction="batchmean")
    final = masks[-1][..., None]
    err = (tokens[:, p:] - t_tokens[:, p:]).pow(2) * final
    tok = err.sum() / (final.sum() * tokens.shape[-1]).clamp_min(1.0)
    ratio = sum(((m.mean(1) - target) ** 2).mean() for m, target in zip(masks, targets, strict=True))
    loss = ce + weights["kl"] * kl + weights["tokens"] * tok + weights["ratio"] * ratio
    kept = {f"kept{i + 1}": m.mean() for i, m in enumerate(masks)}
    parts = {k: float(v.detach()) for k, v in
             {"loss": loss, "ce": ce, "kl": kl, "tokens": tok, "ratio": ratio, "kept": masks[-1].mean(),
              **kept}.items()}
    return loss, parts
