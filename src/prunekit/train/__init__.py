"""``prunekit.train``: the one trainer for recovery fine-tunes, pruning during training and the zoo.

- :func:`fit` / :class:`TrainConfig`: the loop (AdamW/SGD, warm-up + cosine, clipping, bf16 on CUDA,
  distillation from a teacher, checkpoints and ``resume``, DDP under torchrun);
- :func:`evaluate`: top-1 of a classifier on labelled batches (all-reduced under torchrun);
- :func:`fit_dynamic`: DynamicViT's scorers and backbone, on the same loop;
- :mod:`prunekit.train.heads`: a classifier's head matched to the data's classes;
- :mod:`prunekit.train.callbacks`: pruning during training (gradual sparsity, slimming, group lasso,
  soft filter pruning, iterative cuts), also as a ``transformers.TrainerCallback``;
- :mod:`prunekit.train.data`: ``imagefolder:DIR`` and ``hf:DIR`` data specs, the seeded validation split;
- :mod:`prunekit.train.distributed`: torchrun plumbing.

>>> import torch, prunekit.train as T
>>> net = torch.nn.Linear(3, 2)
>>> T.fit(net, [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))], epochs=2, progress=False).steps
2
"""
from prunekit.train.callbacks import (
    Callback,
    GradualPruning,
    GroupLasso,
    IterativeCuts,
    LoopState,
    LossTerm,
    OnStep,
    Slimming,
    SoftFilterPruning,
    hf_callback,
)
from prunekit.train.dynamic import fit_dynamic
from prunekit.train.loop import FitResult, TrainConfig, Trainer, evaluate, fit

__all__ = ["fit", "evaluate", "fit_dynamic", "TrainConfig", "FitResult", "Trainer", "Callback", "LoopState",
           "LossTerm", "OnStep", "GradualPruning", "Slimming", "GroupLasso", "SoftFilterPruning", "IterativeCuts",
           "hf_callback"]
