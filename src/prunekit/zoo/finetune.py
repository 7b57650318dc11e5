"""The zoo classifiers' built-in recovery fine-tune, on :func:`prunekit.train.fit`.

Fashion-MNIST's training split with shift+flip augmentation, AdamW + warm-up/cosine at a lower
learning rate than the recipe's. Any other model recovers with ``prunekit.train.fit`` on its own
data (or ``prunekit finetune MODEL --data SPEC``).

>>> from prunekit.zoo import build
>>> info = finetune(build("fmnist-resnet"), "fmnist-resnet", epochs=0.001)   # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.zoo.entries import ENTRIES

__all__ = ["finetune", "finetune_steps", "fmnist_batches", "FINETUNE_LR"]

# the zoo models with a built-in fine-tune, and its lr (a view of their ZooEntry's finetune_lr)
FINETUNE_LR = {name: e.finetune_lr for name, e in ENTRIES.items() if e.finetune_lr is not None}


def fmnist_batches(batch: int = 128, samples: int | None = None, augment: bool = True):
    """``(batches, steps_per_epoch)``: a :func:`prunekit.train.fit` stream over Fashion-MNIST's training
    split (its first ``samples`` images), shuffled and shift+flip augmented from the trainer's generator."""
    from prunekit.data import load_fashion_mnist
    from prunekit.zoo.train import _loader
    x, y = load_fashion_mnist("train")
    if samples:
        x, y = x[:samples], y[:samples]
    return _loader(x, y, batch, augment), max(1, x.shape[0] // batch)


def finetune(model: nn.Module, workload_name: str, epochs: float = 1.0, lr: float | None = None,
             batch: int = 128, samples: int | None = None, seed: int = 0, teacher: nn.Module | None = None,
             regularizer: Callable[[], torch.Tensor] | None = None,
             on_step: Callable[[int], object] | None = None, callbacks: Sequence = (), **train_kw) -> dict:
    """Fine-tune a pruned zoo classifier for ``epochs`` (may be fractional) of Fashion-MNIST.

    ``samples`` limits the training set to its first N images. ``teacher`` (typically the dense model
    before pruning) adds knowledge distillation: half the loss is the KL divergence to its softened
    outputs. ``callbacks`` (:mod:`prunekit.train.callbacks`) prune during training; ``regularizer``
    (a loss term) and ``on_step`` (called with the step count) are plain-function shortcuts for
    them. ``train_kw`` are further :class:`prunekit.train.TrainConfig` fields (``checkpoint_dir``,
    ``resume``, ...). Returns steps, seconds and last loss.
    """
    from prunekit.train import LossTerm, OnStep, fit
    if workload_name not in FINETUNE_LR:
        raise PruningError(workload_name, "fine-tune", f"no built-in fine-tune recipe (built in: "
                           f"{sorted(FINETUNE_LR)}); train it with prunekit.train.fit on your data or "
                           "`prunekit finetune MODEL --data SPEC`")
    data, spe = fmnist_batches(batch, samples)
    cbs = list(callbacks) + ([LossTerm(regularizer)] if regularizer is not None else []) \
        + ([OnStep(on_step)] if on_step is not None else [])
    lr = lr or FINETUNE_LR[workload_name]
    res = fit(model, data, epochs=epochs, lr=lr, steps_per_epoch=spe, seed=seed, batch=batch,
              weight_decay=ENTRIES[workload_name].finetune_weight_decay, label_smoothing=0.1,
              desc=f"fine-tune {workload_name}", teacher=teacher.eval() if teacher is not None else None,
              callbacks=cbs, **train_kw)
    model.eval()
    return {"epochs": epochs, "steps": res.steps, "seconds": round(res.seconds, 1),
            "last_loss": round(res.last_loss, 4), "lr": lr, "batch": batch,
            "train_samples": min(samples or 60000, 60000),
            "distilled": teacher is not None}


def finetune_steps(epochs: float, batch: int = 128, samples: int | None = None, train_size: int = 60000) -> int:
    """How many optimizer steps :func:`finetune` takes for ``epochs`` at ``batch`` on ``samples`` images.

    >>> finetune_steps(0.5), finetune_steps(1, batch=64, samples=256)
    (234, 4)
    """
    n = min(samples, train_size) if samples else train_size
    return max(1, int(epochs * max(1, n // batch)))
