"""Rules for ops that pick positions along a dimension: advanced indexing, embedding, index_select."""
from __future__ import annotations

from typing import TYPE_CHECKING

from prunekit.structured.trace.registry import rule

if TYPE_CHECKING:
    from prunekit.structured.trace.tracer import Tracer


@rule("index")
def index(tr: Tracer, func, args, kwargs, out) -> None:
    x, idx = args[0], list(args[1])
    pos = [i for i, t in enumerate(idx) if t is not None]
    lb = tr.lab(x)
    for i in pos:
        tr.g.fix(lb[i])
        tr.fix_all([idx[i]], None)
    if pos and pos == list(range(pos[0], pos[-1] + 1)):
        nidx = out.dim() - (x.dim() - len(pos))
        labels = list(lb[:pos[0]]) + [tr.g.fresh_label(s) for s in out.shape[pos[0]:pos[0] + nidx]] \
            + list(lb[pos[-1] + 1:])
        tr.set(out, labels)
    else:
        tr.fix_all(args, out)


@rule("embedding")
def embedding(tr: Tracer, func, args, kwargs, out) -> None:
    w, idx = args[0], args[1]
    lw = tr.lab(w)
    tr.g.fix(lw[0])
    tr.set(out, [tr.g.fresh_label(s) for s in idx.shape] + [lw[1]])


@rule("index_select")
def index_select(tr: Tracer, func, args, kwargs, out) -> None:
    x, d = args[0], args[1] % args[0].dim()
    lb = list(tr.lab(x))
    tr.g.fix(lb[d])
    lb[d] = tr.g.fresh_label(out.shape[d])
    tr.set(out, lb)
