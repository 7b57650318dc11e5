"""prunekit: make trained PyTorch models smaller and faster, and measure it honestly.

The public verbs are imported lazily, so ``import prunekit`` stays cheap:

- structured pruning: ``prune``, ``groups``, ``drop_layers``
- unstructured / N:M sparsity: ``sparsify``, ``finalize``, ``sparsity_report``
- pruning during training: ``GradualPruner`` (unstructured), ``slimming_penalty`` (Network Slimming),
  ``prune_iteratively`` (structured cuts in rounds with training between them)
- saving: ``save``, ``load``; deployment: ``export_onnx`` (checked in onnxruntime)
- measurement: ``profile``
- token reduction: ``prunekit.tokens``
"""
from __future__ import annotations

import importlib

from prunekit.errors import PruningError

__version__ = "0.1.0"

_LAZY = {
    "prune": "prunekit.structured", "groups": "prunekit.structured", "drop_layers": "prunekit.structured",
    "slimming_penalty": "prunekit.structured", "prune_iteratively": "prunekit.structured",
    "GradualPruner": "prunekit.sparse",
    "sparsify": "prunekit.sparse", "finalize": "prunekit.sparse", "sparsity_report": "prunekit.sparse",
    "save": "prunekit.serialize", "load": "prunekit.serialize",
    "profile": "prunekit.measure",
    "export_onnx": "prunekit.export",
}
__all__ = ["PruningError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in ("tokens", "zoo", "data", "measure"):
        return importlib.import_module(f"prunekit.{name}")
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
