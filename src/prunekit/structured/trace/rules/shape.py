"""Rules for ops that move dimensions around: views, permutes, slices, splits, concatenation, padding."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from prunekit.structured.trace.dims import Label
from prunekit.structured.trace.registry import rule

if TYPE_CHECKING:
    from prunekit.structured.trace.tracer import Tracer

VIEW_OPS = ("view", "_unsafe_view", "reshape", "_reshape_alias", "unflatten", "flatten", "view_copy")


@rule(*VIEW_OPS)
def view(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    stream = [n for lb in tr.lab(x) for n in lb]
    labels: list[Label] = []
    g = tr.g
    chan = tr.lab(x)[1] if x.dim() >= 4 else ()
    composite = len(chan) > 1 or any(g.defn[g.find(n)] is not None for n in chan)
    ok = True
    for s in out.shape:
        acc: list[int] = []
        prod = 1
        while prod < s and stream:
            n = stream[0]
            sn = g.size[g.find(n)]
            if s % (prod * sn) == 0:
                acc.append(stream.pop(0))
                prod *= sn
                continue
            need = s // prod
            if s % prod or sn % need:
                ok = False
                break
            # only for the channel dim of a feature map (N, C, ...): token widths split into heads keep
            # their literal head sizes (manual attention reshapes with them)
            was_leaf_channel = (x.dim() >= 4 and n in tr.lab(x)[1] and g.defn[g.find(n)] is None
                                and "channel" in g.kinds[g.find(n)])
            parts = g.split(n, need, ("split",))
            if parts is None:
                ok = False
                break
            if was_leaf_channel:  # (outer literal, inner = C // outer): the inner part stays prunable,
                g.kinds[g.find(parts[1])] = {"channel", "inner"}  # as in x.reshape(B, groups, C // groups)
            stream[0:1] = [p for p in parts if g.size[g.find(p)] != 1]
        if not ok or prod != s:
            ok = False
            break
        labels.append(tuple(acc))
    if not ok or stream:
        tr.fix_all(args, out)
        return
    if composite:  # already (groups, per-group) etc.; a leaf split here keeps its outer part "split"
        _fix_outer_channel_dims(tr, chan, labels)
    tr.set(out, labels)


def _fix_outer_channel_dims(tr: Tracer, channel: Label, labels: list[Label]) -> None:
    """A feature map's channels viewed as several dims, e.g. ``reshape(B, tr.radix, C // tr.radix, ..)``:
    all but the innermost are literal sizes of the forward (radix, groups of a channel shuffle), so fixed."""
    g = tr.g
    chan = {leaf for n in channel for leaf in g.leaves(n)}
    dims = [lb for lb in labels if lb and all(leaf in chan for n in lb for leaf in g.leaves(n))]
    for lb in dims[:-1]:
        g.fix(lb)


@rule("expand")
def expand(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    lb = tr.lab(x)
    off = out.dim() - x.dim()
    labels = [tr.g.fresh_label(s) for s in out.shape[:off]]
    for i, s in enumerate(x.shape):
        # a broadcast dim takes whatever its consumer keeps (e.g. a group statistic expanded over channels)
        labels.append(lb[i] if s == out.shape[i + off] else tr.g.fresh_label(out.shape[i + off], fixed=False))
    tr.set(out, labels)


@rule("permute")
def permute(tr: Tracer, func, args, kwargs, out) -> None:
    lb = tr.lab(args[0])
    dims = [d % max(1, args[0].dim()) for d in args[1]]
    tr.set(out, [lb[d] for d in dims])


@rule("transpose", "swapaxes")
def transpose(tr: Tracer, func, args, kwargs, out) -> None:
    lb = list(tr.lab(args[0]))
    nd = max(1, args[0].dim())
    a, b = args[1] % nd, args[2] % nd
    lb[a], lb[b] = lb[b], lb[a]
    tr.set(out, lb)


@rule("t", "numpy_T")
def transpose_2d(tr: Tracer, func, args, kwargs, out) -> None:
    tr.set(out, list(reversed(tr.lab(args[0]))))


@rule("unsqueeze")
def unsqueeze(tr: Tracer, func, args, kwargs, out) -> None:
    lb = list(tr.lab(args[0]))
    d = args[1] % (args[0].dim() + 1)
    lb.insert(d, ())
    tr.set(out, lb)


@rule("squeeze")
def squeeze(tr: Tracer, func, args, kwargs, out) -> None:
    lb = tr.lab(args[0])
    x = args[0]
    if len(args) > 1:
        dims = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        dims = {d % max(1, x.dim()) for d in dims}
    else:
        dims = set(range(x.dim()))
    tr.set(out, [lb[i] for i in range(x.dim()) if not (i in dims and x.shape[i] == 1)])


@rule("select")
def select(tr: Tracer, func, args, kwargs, out) -> None:
    x, d = args[0], args[1] % args[0].dim()
    lb = tr.lab(x)
    tr.g.fix(lb[d])
    tr.set(out, [lb[i] for i in range(x.dim()) if i != d])


@rule("unbind")
def unbind(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    d = (args[1] if len(args) > 1 else 0) % x.dim()
    lb = tr.lab(x)
    tr.g.fix(lb[d])
    for t in out:
        tr.set(t, [lb[i] for i in range(x.dim()) if i != d])


@rule("slice")
def slice_(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    d = (args[1] if len(args) > 1 else 0) % x.dim()
    lb = list(tr.lab(x))
    if out.shape[d] == x.shape[d]:
        tr.set(out, lb)
        return
    tr.g.fix(lb[d])
    lb[d] = tr.g.fresh_label(out.shape[d])
    tr.set(out, lb)


def _split_outputs(tr: Tracer, x: torch.Tensor, d: int, outs) -> None:
    lb = tr.lab(x)
    g = tr.g
    sizes = [t.shape[d] for t in outs]
    pieces = []
    for s in sizes:
        pieces.append(g.new(s, g.kinds[g.find(lb[d][0])] if len(lb[d]) == 1 else ("split",), s == 1))
    whole = g.new(x.shape[d])
    g.defn[whole] = ("cat", [p for p, s in zip(pieces, sizes, strict=False) if s > 0])
    g.union(g.as_node(lb[d]), whole)
    live = [p for p, s in zip(pieces, sizes, strict=False) if s > 1]
    if len(set(sizes)) == 1:
        # equal pieces (chunk, or split by a width attribute): they must stay equal after pruning,
        # so they share one index set
        for p in live[1:]:
            g.union(live[0], p)
    else:
        # unequal pieces: the sizes usually come from attributes the surgery cannot see
        g.fix(live, "split into unequal pieces")
    for t, p, s in zip(outs, pieces, sizes, strict=False):
        new = list(lb)
        new[d] = (p,) if s > 1 else ()
        tr.set(t, new)


@rule("split", "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes")
def split(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    d = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % x.dim()
    if len(out) == 1:
        tr.set(out[0], list(tr.lab(x)))
        return
    size = args[1] if len(args) > 1 else kwargs.get("split_size")
    if isinstance(size, int):  # split(x, 8): if 8 is a literal, pruning the dim changes the piece count
        tr.module_ops.append((tr.module(), "split", (size, tr.lab(x)[d])))
    _split_outputs(tr, x, d, out)


@rule("chunk")
def chunk(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    d = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % x.dim()
    _split_outputs(tr, x, d, out)


@rule("cat")
def cat(tr: Tracer, func, args, kwargs, out) -> None:
    ts = [t for t in args[0] if t.numel() > 0 or t.dim() == out.dim()]
    ts = [t for t in ts if t.dim() == out.dim()]
    d = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
    g = tr.g
    labels: list[Label] = [None] * out.dim()  # type: ignore[list-item]
    for t in ts:
        lb = tr.lab(t)
        for i in range(out.dim()):
            if i == d:
                continue
            if labels[i] is None:
                labels[i] = lb[i]
            else:
                tr.unify(labels[i], lb[i])
    kids = [g.as_node(tr.lab(t)[d]) for t in ts if t.shape[d] > 0]
    if len(kids) == 1:
        labels[d] = tr.lab(ts[0])[d]
    else:
        whole = g.new(out.shape[d])
        g.defn[whole] = ("cat", kids)
        labels[d] = (whole,)
    tr.set(out, [lb if lb is not None else g.fresh_label(s) for lb, s in zip(labels, out.shape, strict=False)])


@rule("stack")
def stack(tr: Tracer, func, args, kwargs, out) -> None:
    ts = list(args[0])
    d = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
    base = list(tr.lab(ts[0]))
    for t in ts[1:]:
        for a, b in zip(base, tr.lab(t), strict=False):
            tr.unify(a, b)
    base.insert(d, tr.g.fresh_label(out.shape[d]))
    tr.set(out, base)


@rule("constant_pad_nd")
def constant_pad_nd(tr: Tracer, func, args, kwargs, out) -> None:
    x, pad = args[0], args[1]
    lb = list(tr.lab(x))
    for k in range(len(pad) // 2):
        d = x.dim() - 1 - k
        if pad[2 * k] or pad[2 * k + 1]:
            tr.g.fix(lb[d])
            lb[d] = tr.g.fresh_label(out.shape[d])
    tr.set(out, lb)
