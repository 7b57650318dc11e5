"""Rules for normalisation layers: their weights share the channels they normalise."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from prunekit.structured.trace.registry import rule

if TYPE_CHECKING:
    from prunekit.structured.trace.tracer import Tracer


@rule(match=lambda name: "batch_norm" in name)
def batch_norm(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    lx = tr.lab(x)
    c = x.shape[1] if x.dim() > 1 else x.shape[0]
    cl = lx[1] if x.dim() > 1 else lx[0]
    for a in args[1:]:
        if isinstance(a, torch.Tensor) and a.dim() == 1 and a.shape[0] == c:
            tr.unify(tr.lab(a)[0], cl)
            name = tr.params.get(id(a))
            if name is not None and a is args[1]:
                tr.norm_weights.add(name)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for t in outs:
        if not isinstance(t, torch.Tensor):
            continue
        if t.shape == x.shape:
            tr.set(t, list(lx))
        elif t.dim() == 1 and t.shape[0] == c:
            tr.set(t, [cl])
        else:
            tr.fresh(t)


@rule("native_layer_norm")
def layer_norm(tr: Tracer, func, args, kwargs, out) -> None:
    x, shape = args[0], list(args[1])
    k = len(shape)
    lx = tr.lab(x)
    for a in args[2:4]:
        if isinstance(a, torch.Tensor):
            for la, lxx in zip(tr.lab(a), lx[-k:], strict=False):
                tr.unify(la, lxx)
            if a is args[2] and id(a) in tr.params:
                tr.norm_weights.add(tr.params[id(a)])
    tr.module_ops.append((tr.module(), "layer_norm", lx[-k:]))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for t in outs:
        if isinstance(t, torch.Tensor):
            tr.set(t, list(lx) if t.shape == x.shape else list(lx[:-k]) + [()] * (t.dim() - x.dim() + k))


@rule("_fused_rms_norm")
def rms_norm(tr: Tracer, func, args, kwargs, out) -> None:
    x, shape = args[0], list(args[1])
    k = len(shape)
    lx = tr.lab(x)
    w = args[2] if len(args) > 2 else None
    if isinstance(w, torch.Tensor):
        for la, lxx in zip(tr.lab(w), lx[-k:], strict=False):
            tr.unify(la, lxx)
    tr.module_ops.append((tr.module(), "layer_norm", lx[-k:]))
    for t in out if isinstance(out, (tuple, list)) else (out,):
        if isinstance(t, torch.Tensor):
            tr.set(t, list(lx) if t.shape == x.shape else list(lx[:-k]) + [()] * (t.dim() - x.dim() + k))


@rule("native_group_norm")
def group_norm(tr: Tracer, func, args, kwargs, out) -> None:
    x, w, b = args[0], args[1], args[2]
    groups = int(args[6])
    g = tr.g
    lx = tr.lab(x)
    c = x.shape[1]
    if 1 < groups < c:
        gnode = g.new(groups, ("group",))
        tr.unify(lx[1], (gnode,) + g.fresh_label(c // groups, fixed=True))
    for a in (w, b):
        if isinstance(a, torch.Tensor):
            tr.unify(tr.lab(a)[0], lx[1])
    if isinstance(w, torch.Tensor) and id(w) in tr.params:
        tr.norm_weights.add(tr.params[id(w)])
    tr.module_ops.append((tr.module(), "group_norm", groups))
    for t in out if isinstance(out, (tuple, list)) else (out,):
        if isinstance(t, torch.Tensor):
            tr.set(t, list(lx)) if t.shape == x.shape else tr.fresh(t)
