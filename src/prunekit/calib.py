"""The one ``calib=`` form that every calibrated method reads (Wanda, block influence, Taylor).

``calib`` is either **one batch**, in the same form as ``example_inputs`` (a tensor, a dict of
keyword tensors, or a tuple of positional tensors), or **an iterable of batches** (a list, a
generator, a ``DataLoader``), each in that form. A batch may carry labels as an ``(inputs, targets)``
pair, as a ``DataLoader`` over a ``TensorDataset(x, y)`` yields them: the targets (a 1-D integer
tensor with one entry per sample) are split off by :func:`split_targets`, so label-free methods see
only the inputs and Taylor importance uses them for its cross-entropy. Taylor also takes a callable
``calib(model) -> loss``.

>>> import torch
>>> len(calib_batches(torch.randn(4, 8))), len(calib_batches([torch.randn(4, 8)] * 3))
(1, 3)
>>> x, y = split_targets([torch.randn(4, 8), torch.tensor([0, 1, 1, 0])])
>>> tuple(x.shape), y.tolist()
((4, 8), [0, 1, 1, 0])
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from prunekit.errors import PruningError

__all__ = ["calib_batches", "split_targets", "CALIB_FORM"]

CALIB_FORM = ("one batch (a tensor, a dict of tensors or a tuple of positional tensors, like example_inputs) "
              "or an iterable of such batches (a list, a DataLoader; (inputs, targets) pairs are fine)")


def _is_one_batch(calib: Any) -> bool:
    if isinstance(calib, (torch.Tensor, Mapping)):
        return True
    return isinstance(calib, tuple) and len(calib) > 0 and all(isinstance(t, torch.Tensor) for t in calib)


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    items = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    return next((t for t in items if isinstance(t, torch.Tensor)), None)


def calib_batches(calib: Any, where: str = "model", operation: str = "calibrate",
                  allow_callable: bool = False) -> list[Any]:
    """``calib`` as a list of batches (see the module doc). Raises a one-line :class:`PruningError`
    naming ``where`` and ``operation`` when it is missing, empty or of another kind.

    >>> calib_batches([], "model", "drop layers")
    Traceback (most recent call last):
    ...
    prunekit.errors.PruningError: model: cannot drop layers: calib is empty; pass at least one batch
    """
    if calib is None:
        raise PruningError(where, operation, f"needs calib=: {CALIB_FORM}")
    if _is_one_batch(calib) or (allow_callable and callable(calib)):
        return [calib]
    if not isinstance(calib, Iterable) or isinstance(calib, (str, bytes)):
        raise PruningError(where, operation, f"calib is a {type(calib).__name__}; give {CALIB_FORM}")
    batches = list(calib)
    if not batches:
        raise PruningError(where, operation, "calib is empty; pass at least one batch")
    for i, b in enumerate(batches):
        if not (isinstance(b, (torch.Tensor, Mapping, tuple, list)) or (allow_callable and callable(b))):
            raise PruningError(where, operation, f"calib batch {i} is a {type(b).__name__}; each batch is "
                               "a tensor, a dict of tensors or a tuple of positional tensors")
    return batches


def split_targets(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """``(inputs, targets)`` when ``batch`` is a pair whose second item is a 1-D integer tensor of one
    label per sample of the first; otherwise ``(batch, None)``. A 2-D integer tensor (an attention mask)
    is an input, not a label."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        first, y = batch
        lead = _first_tensor(first)
        if y.ndim == 1 and not y.is_floating_point() and not y.is_complex() and lead is not None \
                and lead.ndim >= 1 and lead.shape[0] == y.shape[0]:
            return first, y
    return batch, None
