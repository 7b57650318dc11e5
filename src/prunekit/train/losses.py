"""The training objectives: the task loss and knowledge distillation from a teacher.

Distillation (Hinton et al., 2015) recovers a pruned model best from the dense model it came from:

- classifiers (and segmenters): KL divergence between softened class distributions at temperature
  ``T``, scaled by ``T**2`` (:func:`kl_logits`);
- encoders without a head (sentence embedders): ``1 - cosine`` between the student's and the
  teacher's final hidden states, averaged over the real tokens (:func:`cosine_hidden`).

:func:`outputs_of` finds the tensor to compare in what a model returns: a tensor, a tuple (its first
element), or a Hugging Face output (``logits``, else ``last_hidden_state``).

>>> import torch
>>> s = torch.tensor([[2.0, 0.0]]); round(float(kl_logits(s, s)), 6)
0.0
>>> h = torch.ones(1, 3, 4); round(float(cosine_hidden(h, 2 * h)), 6)
0.0
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["outputs_of", "kl_logits", "cosine_hidden", "task_loss", "distill_loss"]


def outputs_of(out: Any) -> tuple[torch.Tensor, str]:
    """``(tensor, kind)`` with kind ``'logits'`` or ``'hidden'`` for what a model returned."""
    if isinstance(out, torch.Tensor):
        return out, "logits"
    for key, kind in (("logits", "logits"), ("last_hidden_state", "hidden")):
        value = getattr(out, key, None)
        if value is None and isinstance(out, dict):
            value = out.get(key)
        if isinstance(value, torch.Tensor):
            return value, kind
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0], "logits"
    raise TypeError(f"cannot find logits or hidden states in a model output of type {type(out).__name__}")


def kl_logits(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """``T**2 * KL(teacher || student)`` over dim 1 (classes), averaged over the batch."""
    t = temperature
    target = nn.functional.log_softmax(teacher.float() / t, dim=1)
    pred = nn.functional.log_softmax(student.float() / t, dim=1)
    return nn.functional.kl_div(pred, target, log_target=True, reduction="batchmean") * t * t


def cosine_hidden(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean ``1 - cos`` between hidden states ``(B, N, D)`` (or ``(B, D)``), over ``mask``'s tokens if given."""
    cos = nn.functional.cosine_similarity(student.float(), teacher.float(), dim=-1)
    if mask is None:
        return (1 - cos).mean()
    m = mask.to(cos.dtype)
    return ((1 - cos) * m).sum() / m.sum().clamp_min(1.0)


def task_loss(out: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy for class logits ``(B, C)`` and for per-pixel logits ``(B, C, H, W)`` alike."""
    return nn.functional.cross_entropy(out.float(), target, label_smoothing=label_smoothing)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float = 2.0,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL on logits, cosine on hidden states (see the module docstring)."""
    if kind == "hidden":
        return cosine_hidden(student, teacher, mask)
    return kl_logits(student, teacher, temperature)
