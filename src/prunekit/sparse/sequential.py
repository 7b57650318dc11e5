"""Sequential calibration for SparseGPT: each layer's Hessian from inputs already pruned upstream.

Frantar & Alistarh 2023 (SparseGPT) prune a model layer by layer, feeding every layer the outputs of
the layers before it *after* those were pruned, so that later layers compensate the earlier errors.
The reference code caches the inputs of each transformer block; this works on any model instead:

1. one forward over the first calibration batch records the order in which the target layers are
   called, and groups the layers that are called one after another on the same input tensor
   (``q``/``k``/``v``, ``gate``/``up``): a group's members do not feed one another;
2. for each group in forward order, the calibration batches run through the model (stopping at the
   group when every member is called once per forward), hooks sum ``X Xᵀ`` of each member's inputs,
   and :func:`prunekit.sparse.sparsegpt.prune_matrix` rewrites its weights and attaches its mask.

Conv2d inputs are unfolded (im2col) so a kernel is one row of the ``(out, in*kh*kw)`` matrix;
grouped convs get one Hessian per group. On any error every target's weight and mask are restored.

>>> import torch
>>> from torch import nn
>>> from prunekit.sparse.masks import Pattern
>>> torch.manual_seed(0) and None
>>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 1))
>>> targets = [("0", net[0]), ("2", net[2])]
>>> masks = sparsegpt_layers(net, targets, [torch.randn(64, 8)], {"0": 32, "2": 32}, Pattern("unstructured"))
>>> [int((~m).sum()) for m in masks.values()], bool((net[2].weight[~net[2].weight_mask] == 0).all())
([32, 32], True)
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunekit.calib import split_targets
from prunekit.errors import PruningError
from prunekit.measure import run_model
from prunekit.sparse.masking import MASK_NAME, attach_mask, detach_mask, is_masked
from prunekit.sparse.masks import Pattern, as_matrix
from prunekit.sparse.sparsegpt import SparseGPT, cumulative_share, prune_matrix

__all__ = ["layer_rows", "input_groups", "sparsegpt_layers"]

OPERATION = "prune with sparsegpt"


class _Stop(BaseException):
    """Raised by a hook to end a calibration forward once the layers of interest have seen their input
    (a BaseException, so a model's ``except Exception`` cannot swallow it)."""


def layer_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer's weight matrix multiplies, ``(groups, rows, in)`` in float32: a Linear's
    inputs flattened over the leading dims, a Conv2d's unfolded patches (``in = in_per_group*kh*kw``)."""
    x = x.detach().float()
    if isinstance(module, nn.Conv2d):
        pad = module.padding
        if isinstance(pad, str) or module.padding_mode != "zeros":
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x, pad = F.pad(x, module._reversed_padding_repeated_twice, mode=mode), 0
        cols = F.unfold(x, module.kernel_size, module.dilation, pad, module.stride)  # (B, C*kh*kw, L)
        g = module.groups
        return cols.transpose(1, 2).reshape(-1, g, cols.shape[1] // g).transpose(0, 1)
    return x.reshape(1, -1, x.shape[-1])


def input_groups(model: nn.Module, targets: list[tuple[str, nn.Module]], batch: Any) -> list[tuple[list[str], bool]]:
    """Target names in forward order, grouped when called back to back on the same input tensor, each
    with whether the calibration forward may stop at the group (all members called once per forward)."""
    calls: list[tuple[str, Any]] = []

    def record(name: str):
        def hook(mod, args):
            calls.append((name, args[0] if args else None))
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in targets]
    try:
        run_model(model, split_targets(batch)[0])
    finally:
        for h in handles:
            h.remove()
    count = Counter(name for name, _ in calls)
    missing = [n for n, _ in targets if n not in count]
    if missing:
        raise PruningError(missing[0], OPERATION, f"{len(missing)} target layers saw no input during calibration")
    groups: list[list[str]] = []
    seen: set[str] = set()
    for i, (name, x) in enumerate(calls):
        if name in seen:
            continue
        seen.add(name)
        prev_name, prev_x = calls[i - 1] if i else (None, None)
        if groups and x is not None and x is prev_x and prev_name in groups[-1]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return [(g, all(count[n] == 1 for n in g)) for g in groups]


def _hessians(model: nn.Module, layers: list[tuple[str, nn.Module]], batches: list[Any],
              stop: bool) -> dict[str, torch.Tensor]:
    """Mean ``X Xᵀ`` per group of each layer's inputs, ``(groups, in, in)``, over all calibration rows."""
    sums: dict[str, torch.Tensor] = {}
    rows: Counter = Counter()
    last = layers[-1][0]

    def make_hook(name: str):
        def hook(mod, args):
            if not args:
                raise PruningError(name, OPERATION, "the layer was called without a positional input")
            x = layer_rows(mod, args[0])
            xtx = x.transpose(1, 2) @ x
            sums[name] = sums[name] + xtx if name in sums else xtx
            rows[name] += x.shape[1]
            if stop and name == last:
                raise _Stop
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in layers]
    try:
        for batch in batches:
            try:
                run_model(model, split_targets(batch)[0])
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / max(rows[n], 1) for n in sums}


def _prune_layer(name: str, module: nn.Module, hessian: torch.Tensor, pruned: int, pattern: Pattern,
                 config: SparseGPT) -> tuple[torch.Tensor, torch.Tensor]:
    weight = module.weight.detach()
    if is_masked(module):  # start from what the forward uses
        weight = weight * getattr(module, MASK_NAME)
    mat = as_matrix(weight)
    groups = hessian.shape[0]
    per = mat.shape[0] // groups
    if pattern.kind == "block" and per % pattern.n:
        raise PruningError(name, OPERATION, f"{per} output channels per conv group do not tile into {pattern} "
                                            "blocks; add it to ignore=")
    new, keep = [], []
    for g in range(groups):
        share = cumulative_share(pruned, g + 1, groups) - cumulative_share(pruned, g, groups)
        try:
            w, k = prune_matrix(mat[g * per:(g + 1) * per], hessian[g], share, pattern, config.blocksize,
                                config.dampening)
        except ValueError as e:
            raise PruningError(name, OPERATION, str(e)) from None
        new.append(w)
        keep.append(k)
    return torch.cat(new).view_as(weight), torch.cat(keep).view_as(weight)


def _restore(targets: list[tuple[str, nn.Module]], saved: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> None:
    for name, mod in targets:
        weight, mask = saved[name]
        if mask is None:
            detach_mask(mod)
        else:
            attach_mask(mod, mask)
        with torch.no_grad():
            mod.weight.copy_(weight)


def sparsegpt_layers(model: nn.Module, targets: list[tuple[str, nn.Module]], batches: list[Any],
                     pruned: dict[str, int], pattern: Pattern,
                     config: SparseGPT | None = None) -> dict[str, torch.Tensor]:
    """Run SparseGPT over ``targets`` in forward order, in place: each layer's weights are rewritten and
    its keep mask attached before the next layer's Hessian is collected. ``pruned`` maps each target to
    the number of tiles to remove (weights, or blocks; ignored for N:M). Returns the masks.

    ``batches`` are calibration batches (see :mod:`prunekit.calib`). The model runs in eval mode
    without gradients and is put back in its mode; if anything raises, every target's weight and mask
    are restored (a copy of the target weights is held meanwhile).
    """
    config = config or SparseGPT()
    saved = {n: (m.weight.detach().clone(), getattr(m, MASK_NAME).clone() if is_masked(m) else None)
             for n, m in targets}
    modules = dict(targets)
    masks: dict[str, torch.Tensor] = {}
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for names, stop in input_groups(model, targets, batches[0]):
                layers = [(n, modules[n]) for n in names]
                hessians = _hessians(model, layers, batches, stop)
                for name, mod in layers:
                    if name not in hessians:
                        raise PruningError(name, OPERATION, "the layer saw no input during calibration")
                    new, keep = _prune_layer(name, mod, hessians.pop(name), pruned.get(name, 0), pattern, config)
                    mod.weight.copy_(new)
                    attach_mask(mod, keep)
                    masks[name] = keep
    except BaseException:
        _restore(targets, saved)
        raise
    finally:
        model.train(was)
    return {n: masks[n] for n, _ in targets}
