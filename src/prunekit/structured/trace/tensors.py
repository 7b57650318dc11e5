"""Every tensor in a model's inputs or outputs, however they are nested.

>>> import torch
>>> [tuple(t.shape) for t in flat_tensors({"a": torch.zeros(2), "b": [torch.zeros(1, 3), None, 4]})]
[(2,), (1, 3)]
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten

__all__ = ["flat_tensors"]


def flat_tensors(x: Any) -> list[torch.Tensor]:
    """Every tensor in nested tuples/lists/dicts (and pytree-registered containers such as ModelOutput)."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in flat_tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in flat_tensors(v)]
    if x is None or isinstance(x, (int, float, bool, str, torch.dtype, torch.device)):
        return []
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]
