"""Unstructured, N:M and block sparsity: masks, activation-aware scoring, compressed storage, sparse kernels.

- :func:`sparsify` zeroes the least important weights (magnitude; Wanda, Sun et al. 2023; random) in an
  unstructured, N:M (Mishra et al. 2021; Zhou et al. 2021) or block pattern, and keeps them zero while
  training; :class:`SparseGPT` (Frantar & Alistarh 2023) also updates the kept weights from calibration
  Hessians, and :class:`OWL` (Yin et al. 2024) sets per-layer ratios from outlier activations;
- :func:`finalize` bakes the masks into plain weights and optionally swaps Linear layers for sparse
  kernels where a timing shows they are faster;
- :class:`GradualPruner` prunes during training: the sparsity rises on Zhu & Gupta's cubic schedule
  (:func:`cubic_sparsity`) while the model trains, re-judging the weights at every update;
- :func:`sparsity_report` counts zeros per layer and in total;
- ``prunekit.save`` stores mostly-zero tensors compressed (see :mod:`prunekit.serialize`).

>>> import torch
>>> import prunekit
>>> net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> prunekit.sparsify(net, 0.75).total
0.75
>>> prunekit.finalize(net)
{}
>>> prunekit.sparsity_report(net).layers["0"]["sparsity"]
0.75
"""
from prunekit.sparse.gradual import GradualPruner, cubic_sparsity
from prunekit.sparse.kernels import SparseLinear, finalize
from prunekit.sparse.masking import attach_mask, detach_mask, is_masked, masked_modules
from prunekit.sparse.oneshot import SparsityResult, sparsify
from prunekit.sparse.owl import OWL
from prunekit.sparse.report import SparsityReport, sparsity_report
from prunekit.sparse.sparsegpt import SparseGPT
from prunekit.sparse.targets import default_targets, output_layer

__all__ = ["sparsify", "SparseGPT", "OWL", "finalize", "sparsity_report", "SparsityResult", "SparsityReport",
           "SparseLinear",
           "GradualPruner", "cubic_sparsity", "attach_mask", "detach_mask", "is_masked", "masked_modules",
           "default_targets", "output_layer"]
