"""``sparsity_report``: how many weights are exactly zero, per layer and in total.

>>> import torch
>>> lin = torch.nn.Linear(4, 2, bias=False)
>>> with torch.no_grad():
...     lin.weight[0] = 0
>>> rep = sparsity_report(torch.nn.Sequential(lin))
>>> rep.as_dict()["total"]["sparsity"], rep.layers["0"]["zeros"]
(0.5, 4)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["sparsity_report", "SparsityReport", "count_zeros"]

_SPARSE_LAYOUTS = (torch.sparse_csr, torch.sparse_bsr, torch.sparse_coo)


def count_zeros(t: torch.Tensor) -> int:
    """Entries of ``t`` that are zero, counting the implicit zeros of sparse layouts."""
    if t.layout in _SPARSE_LAYOUTS:
        values = t.values()
        return t.numel() - int(torch.count_nonzero(values))
    if type(t) is not torch.Tensor and not isinstance(t, nn.Parameter):  # e.g. semi-structured
        t = t.to_dense()
    return t.numel() - int(torch.count_nonzero(t))


@dataclass
class SparsityReport:
    """Per-layer ``{"numel", "zeros", "sparsity"}`` for every weight matrix, the total over them and the
    zero fraction over all of the model's parameters (``model``)."""

    layers: dict[str, dict] = field(default_factory=dict)
    total: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"layers": self.layers, "total": self.total, "model": self.model}

    def __str__(self) -> str:
        width = max([len(n) for n in self.layers] + [20])
        lines = [f"{'layer':<{width}} {'weights':>12} {'zeros':>12} {'sparsity':>9}"]
        rows = [*self.layers.items(), ("total (weight matrices)", self.total), ("model (all parameters)", self.model)]
        for name, r in rows:
            lines.append(f"{name:<{width}} {r['numel']:>12,} {r['zeros']:>12,} {r['sparsity']:>9.4f}")
        return "\n".join(lines)


def _row(numel: int, zeros: int) -> dict:
    return {"numel": numel, "zeros": zeros, "sparsity": round(zeros / numel, 6) if numel else 0.0}


@torch.no_grad()
def sparsity_report(model: nn.Module) -> SparsityReport:
    """Zero counts of the ``weight`` of every module that has a weight matrix (2-D or more: Linear,
    Conv, embeddings, sparse-kernel Linear), their total, and the whole model's parameters."""
    rep = SparsityReport()
    n_all = z_all = 0
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            rep.layers[name] = _row(w.numel(), count_zeros(w))
    n_all = sum(r["numel"] for r in rep.layers.values())
    z_all = sum(r["zeros"] for r in rep.layers.values())
    rep.total = _row(n_all, z_all)
    params = list(model.parameters())
    rep.model = _row(sum(p.numel() for p in params), sum(count_zeros(p) for p in params))
    return rep
