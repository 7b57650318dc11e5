"""The dimension graph: a union-find over dimension nodes, with products and concatenations.

Every dimension of every traced tensor carries a *label*, a tuple of node ids whose sizes multiply
to the dimension's size. Ops merge nodes (``union``), split a node into factors (``split``: a
``qkv`` width ``3C`` becomes ``3 x heads x head_dim``) or define one as the concatenation of others
(``cat``/``split`` ops). After tracing, ``keep_index`` maps the units kept per leaf node back to the
indices kept along any labelled dimension.

>>> g = DimGraph()
>>> a, b = g.new(4), g.new(4)
>>> g.union(a, b)
>>> g.find(a) == g.find(b)
True
>>> whole = g.new(8)
>>> g.defn[whole] = ("cat", [a, g.new(4)])
>>> g.keep_index((whole,), {g.find(a): torch.tensor([1, 3])}).tolist()   # a's units 1, 3, then all of the rest
[1, 3, 4, 5, 6, 7]
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["DimGraph", "Label"]

Label = tuple  # tuple of node ids; the product of their sizes is the dimension's size


class DimGraph:
    """Union-find over dimension nodes; a class may be defined as a product or a concatenation."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.kinds: list[set] = []
        self.defn: list[tuple | None] = []
        self.note: list[str] = []

    def new(self, size: int, kinds: Iterable[str] = (), fixed: bool = False, note: str = "") -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.fixed.append(fixed)
        self.kinds.append(set(kinds))
        self.defn.append(None)
        self.note.append(note)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def fresh_label(self, size: int, fixed: bool = True, kinds: Iterable[str] = ()) -> Label:
        return () if size == 1 else (self.new(size, kinds, fixed),)

    def fix(self, nodes: Iterable[int], reason: str = "") -> None:
        for n in nodes:
            r = self.find(n)
            self.fixed[r] = True
            if reason and not self.note[r]:
                self.note[r] = reason

    def mark(self, nodes: Iterable[int], kind: str) -> None:
        for n in nodes:
            self.kinds[self.find(n)].add(kind)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self.fixed[ra] = self.fixed[rb] = True
            return
        self.parent[rb] = ra
        self.fixed[ra] = self.fixed[ra] or self.fixed[rb]
        self.kinds[ra] |= self.kinds[rb]
        da, db = self.defn[ra], self.defn[rb]
        if da is None:
            self.defn[ra] = db
        elif db is not None:
            if da[0] == db[0] == "prod":
                self.unify(tuple(da[1]), tuple(db[1]))
            elif da[0] == db[0] == "cat" and [self.size[c] for c in da[1]] == [self.size[c] for c in db[1]]:
                for x, y in zip(da[1], db[1], strict=False):
                    self.union(x, y)
            else:  # incompatible structure: keep both as they are, prune neither
                self.fixed[ra] = True
                self.fix(db[1])

    def children(self, n: int) -> list[int] | None:
        d = self.defn[self.find(n)]
        return None if d is None else list(d[1])

    def split(self, n: int, first: int, kinds: Iterable[str] | None) -> list[int] | None:
        """Nodes whose product is ``n`` and whose leading part has size ``first`` (None: impossible)."""
        r = self.find(n)
        d = self.defn[r]
        if d is not None and d[0] == "cat" and len(d[1]) == first \
                and len({self.size[self.find(c)] for c in d[1]}) == 1:
            # cat of k equal parts viewed as (k, part), e.g. BEiT's qkv bias cat(q_bias, k_bias, v_bias)
            # reshaped to (3, heads, head_dim): the parts share one layout, so they are pruned alike
            kids = list(d[1])
            for c in kids[1:]:
                self.union(kids[0], c)
            a = self.new(first, (), fixed=True)
            self.defn[r] = ("prod", [a, kids[0]])
            return [a, kids[0]]
        if d is not None:
            return list(d[1]) if d[0] == "prod" else None
        if self.size[r] % first:
            return None
        k = self.kinds[r] if kinds is None else kinds
        a, b = self.new(first, k), self.new(self.size[r] // first, k)
        self.defn[r] = ("prod", [a, b])
        return [a, b]

    def unify(self, a: Label, b: Label, kinds: Iterable[str] | None = None) -> bool:
        """Make two labels of the same total size equal, refining nodes where their factors differ."""
        xs, ys = list(a), list(b)
        while xs and ys:
            x, y = xs[0], ys[0]
            sx, sy = self.size[self.find(x)], self.size[self.find(y)]
            if sx == sy:
                self.union(x, y)
                xs.pop(0)
                ys.pop(0)
                continue
            if sx > sy:
                xs, ys, x, y, sx, sy = ys, xs, y, x, sy, sx
            parts = self.split(y, sx, kinds)  # y is the bigger one
            if parts is None:
                self.fix(xs + ys)
                return False
            ys[0:1] = [p for p in parts if self.size[self.find(p)] != 1]
        if xs or ys:
            self.fix(xs + ys)
            return False
        return True

    def as_node(self, label: Label, fixed_if_unit: bool = True) -> int:
        if len(label) == 1:
            return label[0]
        if not label:
            return self.new(1, (), fixed_if_unit)
        n = self.new(math.prod(self.size[self.find(x)] for x in label))
        self.defn[n] = ("prod", list(label))
        return n

    # ----- after tracing -------------------------------------------------------------------------
    def propagate_fixed(self) -> None:
        stack = [i for i in range(len(self.parent)) if self.parent[i] == i and self.fixed[i]]
        seen = set()
        while stack:
            r = self.find(stack.pop())
            if r in seen:
                continue
            seen.add(r)
            self.fixed[r] = True
            d = self.defn[r]
            if d is not None:
                stack.extend(d[1])

    def leaves(self, n: int, depth: int = 0) -> list[int]:
        r = self.find(n)
        d = self.defn[r]
        if d is None or depth > 64:
            return [r]
        return [leaf for c in d[1] for leaf in self.leaves(c, depth + 1)]

    def owner(self, label: Label, leaf: int, depth: int = 0) -> torch.Tensor | None:
        """For each position of a dimension with ``label``: the unit of ``leaf`` it belongs to, or -1."""
        if len(label) == 1 and self.find(label[0]) == leaf:  # the common case: the dim is the group itself
            return torch.arange(self.size[leaf])
        sizes = [self.size[self.find(n)] for n in label]
        parts = [self._owner_node(n, leaf, depth) for n in label]
        if all(p is None for p in parts):
            return None
        out = torch.full(sizes or [1], -1, dtype=torch.long)
        for i, p in enumerate(parts):
            if p is not None:
                shape = [1] * len(sizes)
                shape[i] = sizes[i]
                pb = p.view(shape).expand(sizes)
                out = torch.where(pb >= 0, pb, out)
        return out.flatten()

    def _owner_node(self, n: int, leaf: int, depth: int) -> torch.Tensor | None:
        r = self.find(n)
        if r == leaf:
            return torch.arange(self.size[r])
        d = self.defn[r]
        if d is None or depth > 64:
            return None
        if d[0] == "prod":
            return self.owner(tuple(d[1]), leaf, depth + 1)
        parts = [self._owner_node(c, leaf, depth + 1) for c in d[1]]
        if all(p is None for p in parts):
            return None
        return torch.cat([p if p is not None else torch.full((self.size[self.find(c)],), -1, dtype=torch.long)
                          for c, p in zip(d[1], parts, strict=False)])

    def kept_size(self, label: Label, keep: dict[int, torch.Tensor]) -> int:
        return math.prod(self._kept_node(n, keep, 0) for n in label)

    def _kept_node(self, n: int, keep: dict[int, torch.Tensor], depth: int) -> int:
        r = self.find(n)
        if r in keep:
            return len(keep[r])
        d = self.defn[r]
        if d is None or depth > 64:
            return self.size[r]
        vals = [self._kept_node(c, keep, depth + 1) for c in d[1]]
        return math.prod(vals) if d[0] == "prod" else sum(vals)

    def keep_index(self, label: Label, keep: dict[int, torch.Tensor]) -> torch.Tensor | None:
        """Indices to keep along a dimension with ``label`` (None: keep everything)."""
        idx: torch.Tensor | None = torch.zeros(1, dtype=torch.long)
        changed = False
        for n in label:
            k, ch = self._keep_node(n, keep, 0)
            changed |= ch
            size = self.size[self.find(n)]
            idx = (idx[:, None] * size + k[None, :]).flatten()
        return idx if changed else None

    def _keep_node(self, n: int, keep: dict[int, torch.Tensor], depth: int) -> tuple[torch.Tensor, bool]:
        r = self.find(n)
        if r in keep:
            return keep[r], True
        d = self.defn[r]
        if d is None or depth > 64:
            return torch.arange(self.size[r]), False
        if d[0] == "prod":
            idx, changed = torch.zeros(1, dtype=torch.long), False
            for c in d[1]:
                k, ch = self._keep_node(c, keep, depth + 1)
                changed |= ch
                idx = (idx[:, None] * self.size[self.find(c)] + k[None, :]).flatten()
            return idx, changed
        parts, off, changed = [], 0, False
        for c in d[1]:
            k, ch = self._keep_node(c, keep, depth + 1)
            changed |= ch
            parts.append(k + off)
            off += self.size[self.find(c)]
        return torch.cat(parts), changed

