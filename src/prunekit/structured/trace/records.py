"""What a trace produces: the coupled groups, their parameter occurrences, MAC and attention records.

``TraceResult.groups()`` turns the dimension graph into :class:`Group` objects: every leaf node that
touches a parameter and is not fixed is a group of units (channels or heads) that must be removed
together, with one :class:`Occurrence` per parameter dimension it indexes into.

>>> import torch
>>> from prunekit.structured.trace import trace
>>> tr = trace(torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 2)), (torch.randn(1, 4),))
>>> [(g.size, g.unit, g.params) for g in tr.groups()]
[(6, 'channels', ['0.bias', '0.weight', '1.weight'])]
>>> tr.macs_total()   # 4 * 6 + 6 * 2
36
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from prunekit.structured.trace.dims import DimGraph, Label

__all__ = ["Occurrence", "Group", "MacRecord", "AttentionRecord", "TraceResult"]


@dataclass
class Occurrence:
    """One parameter (or buffer) dimension that a group's units index into."""

    name: str          # qualified name in the model, e.g. "layers.0.conv1.weight"
    dim: int
    owner: torch.Tensor  # per position along ``dim``: unit index, or -1 if not in this group
    is_buffer: bool = False


@dataclass
class Group:
    """A set of coupled parameter dimensions that must lose the same units together."""

    id: int
    root: int
    size: int                     # number of units
    unit: str                     # "channels" or "heads"
    occurrences: list[Occurrence] = field(default_factory=list)
    unit_width: int = 1           # positions per unit in the widest occurrence (head_dim for heads)

    @property
    def params(self) -> list[str]:
        return sorted({o.name for o in self.occurrences})

    def __repr__(self) -> str:
        members = ", ".join(f"{o.name}[{o.dim}]" for o in self.occurrences if not o.is_buffer)
        return f"Group {self.id} ({self.size} {self.unit}): {members}"


@dataclass
class MacRecord:
    labels: list[Label]
    const: int


@dataclass
class AttentionRecord:
    module: str
    q_heads: Label
    kv_heads: Label
    head_dim: int


class TraceResult:
    """The dimension graph of one traced forward pass, and what the surgery needs to know."""

    def __init__(self, graph: DimGraph, param_labels: dict[str, list[Label]], buffers: set[str],
                 macs: list[MacRecord], attention: list[AttentionRecord], norm_weights: set[str],
                 module_ops: list[tuple[str, str, Any]], outputs: Any):
        self.graph = graph
        self.param_labels = param_labels
        self.buffers = buffers
        self.macs = macs
        self.attention = attention
        self.norm_weights = norm_weights
        self.module_ops = module_ops
        self.outputs = outputs
        self.measured_macs: int | None = None  # the flop counter's count of the traced pass, if asked for
        self._groups: list[Group] | None = None

    def fix_params(self, names: Iterable[str]) -> None:
        for n in names:
            for label in self.param_labels.get(n, []):
                self.fix_label(label)

    def fix_label(self, label: Label) -> None:
        """Keep ``label``'s dimensions as they are; the cached groups are dropped only if that changes them."""
        g = self.graph
        new = [n for n in label if not g.fixed[g.find(n)]]
        if new:
            g.fix(new)
            self._groups = None

    def groups(self) -> list[Group]:
        """Prunable groups, in order of first appearance in the forward pass."""
        if self._groups is not None:
            return self._groups
        g = self.graph
        g.propagate_fixed()
        leaves: dict[int, list[tuple[str, int, Label]]] = {}
        seen: set[tuple[int, str, int]] = set()
        for name, labels in self.param_labels.items():
            for dim, label in enumerate(labels):
                for n in label:
                    for leaf in g.leaves(n):
                        if (leaf, name, dim) not in seen:
                            seen.add((leaf, name, dim))
                            leaves.setdefault(leaf, []).append((name, dim, label))
        out = []
        for leaf, occ in leaves.items():
            r = g.find(leaf)
            kinds = g.kinds[r]
            if g.fixed[r] or g.size[r] < 2 or g.defn[r] is not None:
                continue
            if "head" in kinds:
                unit = "heads"
            elif "group" in kinds or ("channel" in kinds and "split" not in kinds):
                unit = "channels"
            else:
                continue
            if not any(name not in self.buffers for name, _, _ in occ):
                continue
            grp = Group(len(out), r, g.size[r], unit)
            for name, dim, label in occ:
                own = g.owner(label, r)
                if own is not None:
                    grp.occurrences.append(Occurrence(name, dim, own, name in self.buffers))
                    grp.unit_width = max(grp.unit_width, int((own >= 0).sum()) // grp.size)
            out.append(grp)
        self._groups = out
        return out

    def macs_after(self, keep: dict[int, torch.Tensor]) -> int:
        return sum(m.const * math.prod(self.graph.kept_size(lb, keep) for lb in m.labels) for m in self.macs)

    def macs_total(self) -> int:
        return self.macs_after({})
