"""The rule for scaled dot-product attention: q, k and v share heads (grouped for GQA); head dims stay fixed."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from prunekit.structured.trace.records import AttentionRecord, MacRecord
from prunekit.structured.trace.registry import rule

if TYPE_CHECKING:
    from prunekit.structured.trace.tracer import Tracer


@rule(match=lambda name: "scaled_dot_product" in name)
def sdpa(tr: Tracer, func, args, kwargs, out) -> None:
    q, k, v = args[0], args[1], args[2]
    g = tr.g
    lq, lk, lv = tr.lab(q), tr.lab(k), tr.lab(v)
    hi = q.dim() - 3  # index of the heads dim: (..., heads, tokens, head_dim)
    for i in range(hi):
        tr.unify(lq[i], lk[i])
        tr.unify(lq[i], lv[i])
    hq, hk = (lq[hi], lk[hi]) if hi >= 0 else ((), ())
    if hi >= 0:
        tr.unify(lk[hi], lv[hi])
        if q.shape[hi] == k.shape[hi]:
            tr.unify(hq, hk)
        elif q.shape[hi] % k.shape[hi] == 0:
            tr.unify(hq, hk + g.fresh_label(q.shape[hi] // k.shape[hi]))
        else:
            g.fix(hq + hk)
        g.mark(hq + hk, "head")
    tr.unify(lq[-1], lk[-1])
    g.fix(lq[-1] + lk[-1] + lv[-1] + lq[-2] + lk[-2])
    mask = kwargs.get("attn_mask")
    if mask is None and len(args) > 3 and isinstance(args[3], torch.Tensor):
        mask = args[3]
    score = list(lq[:-1]) + [lk[-2]]
    if isinstance(mask, torch.Tensor):
        ml = tr.lab(mask)
        off = len(score) - mask.dim()
        for i, s in enumerate(mask.shape):
            if s > 1 and i + off >= 0:
                tr.unify(ml[i], score[i + off])
    outs = out if isinstance(out, (tuple, list)) else (out,)
    tr.set(outs[0], list(lq[:-1]) + [lv[-1]])
    for t in outs[1:]:
        if isinstance(t, torch.Tensor):
            tr.fresh(t)
    tr.attention.append(AttentionRecord(tr.module(), hq, hk, q.shape[-1]))
    tr.macs.append(MacRecord(list(lq) + [lk[-2]], 1))
    tr.macs.append(MacRecord(list(lq[:-1]) + [lk[-2], lv[-1]], 1))
