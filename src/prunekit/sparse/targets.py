"""Which weights sparsity applies to, and the input statistics that activation-aware scores need.

Default targets: the weights of every ``nn.Linear`` and ``nn.Conv2d`` except the model's output
layer, found as ``model.get_classifier()`` (timm and the prunekit zoo), else Hugging Face's
``get_output_embeddings()``, else the last ``nn.Linear`` in module order.

>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> [name for name, _ in default_targets(net)]
['0']
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.calib import calib_batches, split_targets
from prunekit.errors import PruningError
from prunekit.measure import run_model
from prunekit.select import ignored_modules

__all__ = ["TARGET_TYPES", "output_layer", "default_targets", "input_norms"]

TARGET_TYPES = (nn.Linear, nn.Conv2d)


def output_layer(model: nn.Module) -> nn.Module | None:
    """The layer whose output is the model's output (the classifier), or ``None``."""
    for getter in ("get_classifier", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        if callable(fn):
            try:
                layer = fn()
            except (NotImplementedError, AttributeError, TypeError):
                layer = None
            if isinstance(layer, nn.Module) and not isinstance(layer, nn.Identity):
                return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def default_targets(model: nn.Module, ignore: Iterable[Any] = ()) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the layers to sparsify; ``ignore`` as in :mod:`prunekit.select` (module
    paths, fnmatch patterns, parameter names, modules, classes) leaves layers dense; a name or
    pattern that matches nothing raises ``PruningError``."""
    skip = ignored_modules(model, ignore)
    head = output_layer(model)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, TARGET_TYPES) and m is not head and n not in skip]


@torch.no_grad()
def input_norms(model: nn.Module, layers: list[tuple[str, nn.Module]], calib: Any) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature of each layer over all calibration rows (Wanda's ``||X_j||_2``).

    ``calib``: one batch or an iterable of batches, the one form of :mod:`prunekit.calib`.
    Conv2d inputs are reduced over batch and space per input channel. The model is run in eval mode
    and restored; hooks are removed even on error.
    """
    batches = calib_batches(calib, "model", "compute wanda input norms")
    sums: dict[str, torch.Tensor] = {}

    def make_hook(name: str, module: nn.Module):
        def hook(mod, args):
            x = args[0].detach()
            if isinstance(mod, nn.Conv2d):
                sq = x.float().pow(2).sum(dim=(0, 2, 3))
            else:
                sq = x.float().reshape(-1, x.shape[-1]).pow(2).sum(0)
            sums[name] = sums[name] + sq if name in sums else sq
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n, m)) for n, m in layers]
    was = model.training
    model.eval()
    try:
        for batch in batches:
            run_model(model, split_targets(batch)[0])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    missing = [n for n, _ in layers if n not in sums]
    if missing:
        raise PruningError(missing[0], "compute wanda input norms",
                           f"{len(missing)} target layers saw no input during calibration")
    return {n: s.sqrt() for n, s in sums.items()}
