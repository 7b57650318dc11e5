"""A short built-in fine-tune that recovers accuracy after structured pruning (zoo classifiers).

It reuses the zoo's own training loop (``prunekit.zoo.train.fit``: AdamW, warm-up + cosine decay,
shift/flip augmentation) at a lower learning rate, on the Fashion-MNIST training split.

>>> from prunekit.zoo import build
>>> info = finetune(build("fmnist-resnet"), "fmnist-resnet", epochs=0.001)   # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["finetune", "finetune_steps", "FINETUNE_LR"]

FINETUNE_LR = {"fmnist-resnet": 1e-3, "fmnist-vit": 3e-4}


def finetune(model: nn.Module, workload_name: str, epochs: float = 1.0, lr: float | None = None,
             batch: int = 128, samples: int | None = None, seed: int = 0, teacher: nn.Module | None = None,
             regularizer: Callable[[], torch.Tensor] | None = None,
             on_step: Callable[[int], object] | None = None) -> dict:
    """Fine-tune a pruned zoo classifier for ``epochs`` (may be fractional) of Fashion-MNIST.

    ``samples`` limits the training set to its first N images. ``teacher`` (typically the dense model
    before pruning) adds knowledge distillation: half the loss is the KL divergence to its softened
    outputs. ``regularizer`` and ``on_step`` go to :func:`prunekit.zoo.train.fit` (a loss term added
    every step; a call after every optimizer step), which is how pruning during training hooks in
    (:func:`finetune_steps` says how many steps there will be). Returns steps, seconds and last loss.
    """
    from prunekit.data import load_fashion_mnist
    from prunekit.zoo.train import _loader, fit
    if workload_name not in FINETUNE_LR:
        raise ValueError(f"no fine-tune recipe for {workload_name!r}; built in: {sorted(FINETUNE_LR)}")
    x, y = load_fashion_mnist("train")
    if samples:
        x, y = x[:samples], y[:samples]
    steps_per_epoch = max(1, x.shape[0] // batch)
    res = fit(model, _loader(x, y, batch, True), epochs, lr or FINETUNE_LR[workload_name], steps_per_epoch,
              seed, weight_decay=5e-4 if "resnet" in workload_name else 0.05, desc=f"fine-tune {workload_name}",
              teacher=teacher.eval() if teacher is not None else None, regularizer=regularizer, on_step=on_step)
    model.eval()
    return {"epochs": epochs, "steps": res.steps, "seconds": round(res.seconds, 1),
            "last_loss": round(res.last_loss, 4),
            "lr": lr or FINETUNE_LR[workload_name], "batch": batch, "train_samples": int(x.shape[0]),
            "distilled": teacher is not None}


def finetune_steps(epochs: float, batch: int = 128, samples: int | None = None, train_size: int = 60000) -> int:
    """How many optimizer steps :func:`finetune` takes for ``epochs`` at ``batch`` on ``samples`` images.

    >>> finetune_steps(0.5), finetune_steps(1, batch=64, samples=256)
    (234, 4)
    """
    n = min(samples, train_size) if samples else train_size
    return max(1, int(epochs * max(1, n // batch)))
