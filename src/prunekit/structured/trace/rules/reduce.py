"""Rules for reductions (sum, mean, norms), ops along one dim (softmax, sort) and spatial ops (pooling,
upsampling, padding)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from prunekit.structured.trace.registry import rule

if TYPE_CHECKING:
    from prunekit.structured.trace.tracer import Tracer

REDUCE_OPS = ("mean", "sum", "amax", "amin", "var", "std", "var_mean", "std_mean", "linalg_vector_norm", "norm",
              "max", "min", "logsumexp", "prod", "nansum", "argmax", "argmin", "any", "all", "count_nonzero")
ALONG_OPS = ("_softmax", "softmax", "_log_softmax", "log_softmax", "cumsum", "cumprod", "roll", "flip", "sort",
             "_safe_softmax", "cummax", "cummin")


def _is_spatial(name: str) -> bool:
    return "pool" in name or "upsample" in name or name.endswith(("_pad1d", "_pad2d", "_pad3d"))


@rule(*REDUCE_OPS)
def reduce(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    lb = tr.lab(x)
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    if isinstance(dims, (list, tuple)) and all(isinstance(d, int) for d in dims) and dims:
        dims = {d % x.dim() for d in dims}
    else:
        dims = set(range(x.dim()))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for t in outs:
        if not isinstance(t, torch.Tensor):
            continue
        if t.dim() == x.dim():
            tr.set(t, [() if i in dims else lb[i] for i in range(x.dim())])
        elif t.dim() == x.dim() - len(dims):
            tr.set(t, [lb[i] for i in range(x.dim()) if i not in dims])
        else:
            tr.fresh(t)


@rule(*ALONG_OPS)
def along(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for t in outs:
        if isinstance(t, torch.Tensor) and t.shape == x.shape:
            tr.set(t, list(tr.lab(x)))
        elif isinstance(t, torch.Tensor):
            tr.fresh(t)


@rule(match=_is_spatial)
def spatial(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    name = func._overloadpacket.__name__
    k = 3 if "3d" in name else 1 if "1d" in name else 2
    lb = tr.lab(x)
    keep = x.dim() - k
    for t in out if isinstance(out, (tuple, list)) else (out,):
        if isinstance(t, torch.Tensor):
            tr.set(t, list(lb[:keep]) + [tr.g.fresh_label(s) for s in t.shape[keep:]])
