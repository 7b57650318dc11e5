"""Rules for the ops that own weights and cost MACs: matrix products, linear, convolution, PReLU."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from prunekit.structured.trace.records import MacRecord
from prunekit.structured.trace.registry import rule

if TYPE_CHECKING:
    from prunekit.structured.trace.tracer import Tracer


@rule("mm", "addmm")
def mm(tr: Tracer, func, args, kwargs, out) -> None:
    a, b = args[-2], args[-1]
    la, lb = tr.lab(a), tr.lab(b)
    tr.unify(la[1], lb[0])
    labels = [la[0], lb[1]]
    if len(args) == 3 and isinstance(args[0], torch.Tensor) and args[0].dim() > 0:
        bias = tr.broadcast([args[0]], list(out.shape))
        for x, y in zip(labels, bias, strict=False):
            if y and x:
                tr.unify(x, y)
    tr.set(out, labels)
    tr.macs.append(MacRecord([la[0], la[1], lb[1]], 1))


@rule("bmm", "baddbmm")
def bmm(tr: Tracer, func, args, kwargs, out) -> None:
    a, b = args[-2], args[-1]
    la, lb = tr.lab(a), tr.lab(b)
    tr.unify(la[0], lb[0])
    tr.unify(la[2], lb[1])
    labels = [la[0], la[1], lb[2]]
    if len(args) == 3 and isinstance(args[0], torch.Tensor):
        for x, y in zip(labels, tr.broadcast([args[0]], list(out.shape)), strict=False):
            if x and y:
                tr.unify(x, y)
    tr.set(out, labels)
    tr.macs.append(MacRecord([la[0], la[1], la[2], lb[2]], 1))


@rule("linear")
def linear(tr: Tracer, func, args, kwargs, out) -> None:
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    lx, lw = tr.lab(x), tr.lab(w)
    tr.unify(lx[-1], lw[1])
    if isinstance(b, torch.Tensor):
        tr.unify(tr.lab(b)[0], lw[0])
    tr.set(out, list(lx[:-1]) + [lw[0]])
    tr.macs.append(MacRecord(list(lx) + [lw[0]], 1))


@rule("convolution", "_convolution")
def convolution(tr: Tracer, func, args, kwargs, out) -> None:
    x, w, b = args[0], args[1], args[2]
    transposed, groups = bool(args[6]), int(args[8])
    g = tr.g
    lx, lw = tr.lab(x), tr.lab(w)
    g.fix(n for lb in lw[2:] for n in lb)
    w_out, w_in = (1, 0) if transposed else (0, 1)
    cin, cout = x.shape[1], out.shape[1]
    if groups == 1:
        tr.unify(lx[1], lw[w_in])
        out_c = lw[w_out] if not transposed else lw[w_out]
    else:
        gnode = g.new(groups, ("group",))
        pin = g.fresh_label(cin // groups, fixed=True)
        pout = g.fresh_label(cout // groups, fixed=True)
        tr.unify(lx[1], (gnode,) + pin, kinds=None)
        if transposed:
            tr.unify(lw[0], (gnode,) + pin)
            tr.unify(lw[1], pout)
        else:
            tr.unify(lw[1], pin)
            tr.unify(lw[0], (gnode,) + pout)
        out_c = (gnode,) + pout
    if isinstance(b, torch.Tensor):
        tr.unify(tr.lab(b)[0], out_c)
    labels = [lx[0] if x.shape[0] == out.shape[0] else g.fresh_label(out.shape[0]), out_c]
    labels += [g.fresh_label(s) for s in out.shape[2:]]
    tr.set(out, labels)
    tr.module_ops.append((tr.module(), "conv", groups))
    k = math.prod(w.shape[2:])
    tr.macs.append(MacRecord(list(labels) + [lw[w_in]], k) if not transposed
                     else MacRecord(list(lx) + [lw[1]], k))


@rule("_prelu_kernel", "prelu")
def prelu(tr: Tracer, func, args, kwargs, out) -> None:
    x, w = args[0], args[1]
    lx = tr.lab(x)
    if w.numel() > 1 and x.dim() > 1:
        tr.unify(tr.lab(w)[0], lx[1])
    tr.set(out, list(lx))
