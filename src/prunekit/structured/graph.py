"""Trace a model into coupled groups of prunable dimensions (after DepGraph, Fang et al., CVPR 2023).

One forward pass on ``example_inputs`` runs under a ``TorchDispatchMode`` that sees every ATen op.
Every dimension of every tensor carries a *label*: a tuple of dimension nodes whose sizes multiply
to the dimension's size. A parameter's dimensions start as fresh nodes; each op states which
dimensions must be equal (``conv``: the input's channels are the weight's input channels; ``add``:
both operands share every dimension; ``mm``: contraction dims match) and the nodes are merged in a
union-find. Reshapes split and merge labels (``qkv`` of width ``3C`` becomes ``3 x heads x
head_dim``), ``cat``/``split`` define a node as a concatenation of others (with index offsets), and
grouped convolutions split channels into ``groups x per_group``.

After the pass, every union-find class that is a leaf (not itself a product or concatenation of
other nodes), touches at least one parameter and is not *fixed* is a prunable group: removing
index ``i`` of that class removes the matching slices of every parameter dimension in it, at the
right offsets. Fixed are: the model's input and output dimensions, batch/token/spatial dims, head
dims, dims indexed by ops the tracer does not understand, and everything inside them. Being
conservative is always safe: an op without a rule fixes all its dimensions.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
...                           torch.nn.Conv2d(8, 4, 3))
>>> g = trace(net, (torch.randn(1, 3, 16, 16),))
>>> [grp.size for grp in g.groups()]
[8]
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from prunekit.errors import PruningError
from prunekit.measure import no_mha_fastpath

__all__ = ["DimGraph", "Group", "Occurrence", "TraceResult", "trace"]

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
        self._groups: list[Group] | None = None

    def fix_params(self, names: Iterable[str]) -> None:
        for n in names:
            for label in self.param_labels.get(n, []):
                self.graph.fix(label)
        self._groups = None

    def groups(self) -> list[Group]:
        """Prunable groups, in order of first appearance in the forward pass."""
        if self._groups is not None:
            return self._groups
        g = self.graph
        g.propagate_fixed()
        leaves: dict[int, list[tuple[str, int, Label]]] = {}
        for name, labels in self.param_labels.items():
            for dim, label in enumerate(labels):
                for n in label:
                    for leaf in g.leaves(n):
                        leaves.setdefault(leaf, [])
                        if (name, dim) not in [(a, b) for a, b, _ in leaves[leaf]]:
                            leaves[leaf].append((name, dim, label))
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


# ----------------------------------------------------------------------------------------------------
# the tracer


def _tensors(x: Any) -> list[torch.Tensor]:
    """Every tensor in nested tuples/lists/dicts (and pytree-registered containers such as ModelOutput)."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    if x is None or isinstance(x, (int, float, bool, str, torch.dtype, torch.device)):
        return []
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


_IDENTITY = {"clone", "contiguous", "detach", "alias", "_to_copy", "lift_fresh", "lift_fresh_copy", "to",
             "_conj", "resolve_conj", "resolve_neg", "type_as", "copy", "dropout", "feature_dropout",
             "native_dropout", "zero_", "fill_", "_unsafe_view_copy", "view_copy_unused", "bernoulli_",
             "normal_", "uniform_", "positive", "masked_fill_", "requires_grad_"}
_ELEMENTWISE = {"hardswish", "hardsigmoid", "hardtanh", "relu6", "elu", "selu", "celu", "leaky_relu", "gelu", "silu",
                "mish", "softplus", "log_sigmoid_forward", "threshold", "rrelu_with_noise", "hardshrink",
                "softshrink", "glu_unused", "sigmoid", "tanh", "relu", "erf", "exp", "clamp", "clamp_min",
                "clamp_max", "pow", "rsqrt", "sqrt", "abs", "neg", "square", "sign", "round", "floor"}
_REDUCE = {"mean", "sum", "amax", "amin", "var", "std", "var_mean", "std_mean", "linalg_vector_norm", "norm",
           "max", "min", "logsumexp", "prod", "nansum", "argmax", "argmin", "any", "all", "count_nonzero"}
_ALONG = {"_softmax", "softmax", "_log_softmax", "log_softmax", "cumsum", "cumprod", "roll", "flip", "sort",
          "_safe_softmax", "cummax", "cummin"}
_VIEW = {"view", "_unsafe_view", "reshape", "_reshape_alias", "unflatten", "flatten", "view_copy"}
_MAC_NAMES = {"mm", "addmm", "bmm", "baddbmm", "convolution", "_convolution", "linear"}


class _Tracer(TorchDispatchMode):
    def __init__(self, params: dict[int, str], buffers: dict[int, str], module_stack: list[str]):
        super().__init__()
        self.g = DimGraph()
        self.params, self.buffers = params, buffers
        self.labels: dict[int, tuple[torch.Tensor, list[Label]]] = {}
        self.param_labels: dict[str, list[Label]] = {}
        self.macs: list[MacRecord] = []
        self.attention: list[AttentionRecord] = []
        self.norm_weights: set[str] = set()
        self.module_ops: list[tuple[str, str, Any]] = []
        self.stack = module_stack

    # ----- labels of tensors
    def lab(self, t: torch.Tensor) -> list[Label]:
        hit = self.labels.get(id(t))
        if hit is not None and hit[0] is t and len(hit[1]) == t.dim():
            return hit[1]
        name = self.params.get(id(t)) or self.buffers.get(id(t))
        if name is not None:
            if name in self.param_labels and len(self.param_labels[name]) == t.dim():
                labels = self.param_labels[name]
            else:
                labels = [self.g.fresh_label(s, fixed=False, kinds=("channel",)) for s in t.shape]
                self.param_labels[name] = labels
        else:
            labels = [self.g.fresh_label(s) for s in t.shape]
        self.labels[id(t)] = (t, labels)
        return labels

    def set(self, t: torch.Tensor, labels: list[Label]) -> None:
        if not isinstance(t, torch.Tensor):
            return
        if len(labels) != t.dim():
            labels = [self.g.fresh_label(s) for s in t.shape]
        self.labels[id(t)] = (t, labels)

    def fresh(self, t: torch.Tensor) -> None:
        self.set(t, [self.g.fresh_label(s) for s in t.shape])

    def fix_all(self, args, out, reason: str = "") -> None:
        for t in _tensors(args):
            for lb in self.lab(t):
                self.g.fix(lb, reason)
        for t in _tensors(out):
            self.fresh(t)

    def unify(self, a: Label, b: Label, kinds=None) -> None:
        self.g.unify(a, b, kinds)

    def module(self) -> str:
        return self.stack[-1] if self.stack else ""

    # ----- dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self.rule(func, args, kwargs, out)
        except Exception as e:  # noqa: BLE001 - a rule that fails must not break the model's forward
            self.fix_all((args, kwargs), out, f"rule for {func} failed: {e}")
        return out

    def broadcast(self, tensors: list[torch.Tensor], out_shape: list[int]) -> list[Label]:
        nd = len(out_shape)
        result: list[Label | None] = [None] * nd
        for t in tensors:
            lb = self.lab(t)
            off = nd - t.dim()
            for i, s in enumerate(t.shape):
                j = i + off
                if j < 0 or s == 1 or s != out_shape[j]:
                    continue
                if result[j] is None:
                    result[j] = lb[i]
                else:
                    self.unify(result[j], lb[i])
        return [r if r is not None else self.g.fresh_label(s) for r, s in zip(result, out_shape, strict=False)]

    def rule(self, func, args, kwargs, out) -> None:  # noqa: C901 - one branch per op family
        name = func._overloadpacket.__name__
        base = name.rstrip("_")
        tensor_args = [a for a in args if isinstance(a, torch.Tensor)]
        if isinstance(out, torch.Tensor) and (torch.Tag.pointwise in func.tags or base in _ELEMENTWISE) \
                or name in ("where", "masked_fill", "copy_", "lerp"):
            ts = [t for t in _tensors((args, kwargs)) if t.dim() > 0]
            first = out if isinstance(out, torch.Tensor) else ts[0]
            labels = self.broadcast(ts, _shape(first))
            if isinstance(out, torch.Tensor):
                if out is args[0] and isinstance(args[0], torch.Tensor):
                    for a, b in zip(self.lab(out), labels, strict=False):
                        self.unify(a, b)
                else:
                    self.set(out, labels)
            return
        if name in _IDENTITY or base in _IDENTITY:
            if tensor_args and isinstance(out, torch.Tensor) and out.shape == tensor_args[0].shape:
                src = self.lab(tensor_args[0])
                if out is tensor_args[0]:
                    return
                self.set(out, list(src))
            elif isinstance(out, torch.Tensor) and not tensor_args:
                self.fresh(out)
            else:
                self.fix_all((args, kwargs), out)
            return
        if not _tensors((args, kwargs)):  # factory ops
            for t in _tensors(out):
                self.fresh(t)
            return
        handler = getattr(self, f"op_{name}", None)
        if handler is None:
            if name in _VIEW:
                handler = self.op_view
            elif name in _REDUCE:
                handler = self.op_reduce
            elif name in _ALONG:
                handler = self.op_along
            elif "batch_norm" in name:
                handler = self.op_batch_norm
            elif "scaled_dot_product" in name:
                handler = self.op_sdpa
            elif "pool" in name or "upsample" in name or name.endswith("_pad1d") or name.endswith("_pad2d") \
                    or name.endswith("_pad3d"):
                handler = self.op_spatial
        if handler is None:
            self.fix_all((args, kwargs), out, f"no rule for aten.{name} in {self.module() or 'the model'}")
            return
        handler(func, args, kwargs, out)

    # ----- shape ops
    def op_view(self, func, args, kwargs, out):
        x = args[0]
        stream = [n for lb in self.lab(x) for n in lb]
        labels: list[Label] = []
        g = self.g
        chan = self.lab(x)[1] if x.dim() >= 4 else ()
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
                was_leaf_channel = (x.dim() >= 4 and n in self.lab(x)[1] and g.defn[g.find(n)] is None
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
            self.fix_all(args, out)
            return
        if composite:  # already (groups, per-group) etc.; a leaf split here keeps its outer part "split"
            self._fix_outer_channel_dims(chan, labels)
        self.set(out, labels)

    def _fix_outer_channel_dims(self, channel: Label, labels: list[Label]) -> None:
        """A feature map's channels viewed as several dims, e.g. ``reshape(B, self.radix, C // self.radix, ..)``:
        all but the innermost are literal sizes of the forward (radix, groups of a channel shuffle), so fixed."""
        g = self.g
        chan = {leaf for n in channel for leaf in g.leaves(n)}
        dims = [lb for lb in labels if lb and all(leaf in chan for n in lb for leaf in g.leaves(n))]
        for lb in dims[:-1]:
            g.fix(lb)

    def op_expand(self, func, args, kwargs, out):
        x = args[0]
        lb = self.lab(x)
        off = out.dim() - x.dim()
        labels = [self.g.fresh_label(s) for s in out.shape[:off]]
        for i, s in enumerate(x.shape):
            # a broadcast dim takes whatever its consumer keeps (e.g. a group statistic expanded over channels)
            labels.append(lb[i] if s == out.shape[i + off] else self.g.fresh_label(out.shape[i + off], fixed=False))
        self.set(out, labels)

    def op_permute(self, func, args, kwargs, out):
        lb = self.lab(args[0])
        dims = [d % max(1, args[0].dim()) for d in args[1]]
        self.set(out, [lb[d] for d in dims])

    def op_transpose(self, func, args, kwargs, out):
        lb = list(self.lab(args[0]))
        nd = max(1, args[0].dim())
        a, b = args[1] % nd, args[2] % nd
        lb[a], lb[b] = lb[b], lb[a]
        self.set(out, lb)

    op_swapaxes = op_transpose

    def op_t(self, func, args, kwargs, out):
        self.set(out, list(reversed(self.lab(args[0]))))

    op_numpy_T = op_t

    def op_unsqueeze(self, func, args, kwargs, out):
        lb = list(self.lab(args[0]))
        d = args[1] % (args[0].dim() + 1)
        lb.insert(d, ())
        self.set(out, lb)

    def op_squeeze(self, func, args, kwargs, out):
        lb = self.lab(args[0])
        x = args[0]
        if len(args) > 1:
            dims = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
            dims = {d % max(1, x.dim()) for d in dims}
        else:
            dims = set(range(x.dim()))
        self.set(out, [lb[i] for i in range(x.dim()) if not (i in dims and x.shape[i] == 1)])

    def op_select(self, func, args, kwargs, out):
        x, d = args[0], args[1] % args[0].dim()
        lb = self.lab(x)
        self.g.fix(lb[d])
        self.set(out, [lb[i] for i in range(x.dim()) if i != d])

    def op_unbind(self, func, args, kwargs, out):
        x = args[0]
        d = (args[1] if len(args) > 1 else 0) % x.dim()
        lb = self.lab(x)
        self.g.fix(lb[d])
        for t in out:
            self.set(t, [lb[i] for i in range(x.dim()) if i != d])

    def op_slice(self, func, args, kwargs, out):
        x = args[0]
        d = (args[1] if len(args) > 1 else 0) % x.dim()
        lb = list(self.lab(x))
        if out.shape[d] == x.shape[d]:
            self.set(out, lb)
            return
        self.g.fix(lb[d])
        lb[d] = self.g.fresh_label(out.shape[d])
        self.set(out, lb)

    def _split_outputs(self, x: torch.Tensor, d: int, outs) -> None:
        lb = self.lab(x)
        g = self.g
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
            self.set(t, new)

    def op_split(self, func, args, kwargs, out):
        x = args[0]
        d = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % x.dim()
        if len(out) == 1:
            self.set(out[0], list(self.lab(x)))
            return
        size = args[1] if len(args) > 1 else kwargs.get("split_size")
        if isinstance(size, int):  # split(x, 8): if 8 is a literal, pruning the dim changes the piece count
            self.module_ops.append((self.module(), "split", (size, self.lab(x)[d])))
        self._split_outputs(x, d, out)

    op_split_with_sizes = op_split
    op_unsafe_split = op_split
    op_unsafe_split_with_sizes = op_split

    def op_chunk(self, func, args, kwargs, out):
        x = args[0]
        d = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % x.dim()
        self._split_outputs(x, d, out)

    def op_cat(self, func, args, kwargs, out):
        ts = [t for t in args[0] if t.numel() > 0 or t.dim() == out.dim()]
        ts = [t for t in ts if t.dim() == out.dim()]
        d = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        g = self.g
        labels: list[Label] = [None] * out.dim()  # type: ignore[list-item]
        for t in ts:
            lb = self.lab(t)
            for i in range(out.dim()):
                if i == d:
                    continue
                if labels[i] is None:
                    labels[i] = lb[i]
                else:
                    self.unify(labels[i], lb[i])
        kids = [g.as_node(self.lab(t)[d]) for t in ts if t.shape[d] > 0]
        if len(kids) == 1:
            labels[d] = self.lab(ts[0])[d]
        else:
            whole = g.new(out.shape[d])
            g.defn[whole] = ("cat", kids)
            labels[d] = (whole,)
        self.set(out, [lb if lb is not None else g.fresh_label(s) for lb, s in zip(labels, out.shape, strict=False)])

    def op_stack(self, func, args, kwargs, out):
        ts = list(args[0])
        d = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        base = list(self.lab(ts[0]))
        for t in ts[1:]:
            for a, b in zip(base, self.lab(t), strict=False):
                self.unify(a, b)
        base.insert(d, self.g.fresh_label(out.shape[d]))
        self.set(out, base)

    def op_constant_pad_nd(self, func, args, kwargs, out):
        x, pad = args[0], args[1]
        lb = list(self.lab(x))
        for k in range(len(pad) // 2):
            d = x.dim() - 1 - k
            if pad[2 * k] or pad[2 * k + 1]:
                self.g.fix(lb[d])
                lb[d] = self.g.fresh_label(out.shape[d])
        self.set(out, lb)

    def op_index(self, func, args, kwargs, out):
        x, idx = args[0], list(args[1])
        pos = [i for i, t in enumerate(idx) if t is not None]
        lb = self.lab(x)
        for i in pos:
            self.g.fix(lb[i])
            self.fix_all([idx[i]], None)
        if pos and pos == list(range(pos[0], pos[-1] + 1)):
            nidx = out.dim() - (x.dim() - len(pos))
            labels = list(lb[:pos[0]]) + [self.g.fresh_label(s) for s in out.shape[pos[0]:pos[0] + nidx]] \
                + list(lb[pos[-1] + 1:])
            self.set(out, labels)
        else:
            self.fix_all(args, out)

    def op__prelu_kernel(self, func, args, kwargs, out):
        x, w = args[0], args[1]
        lx = self.lab(x)
        if w.numel() > 1 and x.dim() > 1:
            self.unify(self.lab(w)[0], lx[1])
        self.set(out, list(lx))

    op_prelu = op__prelu_kernel

    def op_embedding(self, func, args, kwargs, out):
        w, idx = args[0], args[1]
        lw = self.lab(w)
        self.g.fix(lw[0])
        self.set(out, [self.g.fresh_label(s) for s in idx.shape] + [lw[1]])

    def op_index_select(self, func, args, kwargs, out):
        x, d = args[0], args[1] % args[0].dim()
        lb = list(self.lab(x))
        self.g.fix(lb[d])
        lb[d] = self.g.fresh_label(out.shape[d])
        self.set(out, lb)

    def op_reduce(self, func, args, kwargs, out):
        x = args[0]
        lb = self.lab(x)
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
                self.set(t, [() if i in dims else lb[i] for i in range(x.dim())])
            elif t.dim() == x.dim() - len(dims):
                self.set(t, [lb[i] for i in range(x.dim()) if i not in dims])
            else:
                self.fresh(t)

    def op_along(self, func, args, kwargs, out):
        x = args[0]
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for t in outs:
            if isinstance(t, torch.Tensor) and t.shape == x.shape:
                self.set(t, list(self.lab(x)))
            elif isinstance(t, torch.Tensor):
                self.fresh(t)

    def op_spatial(self, func, args, kwargs, out):
        x = args[0]
        name = func._overloadpacket.__name__
        k = 3 if "3d" in name else 1 if "1d" in name else 2
        lb = self.lab(x)
        keep = x.dim() - k
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.set(t, list(lb[:keep]) + [self.g.fresh_label(s) for s in t.shape[keep:]])

    # ----- compute ops
    def op_mm(self, func, args, kwargs, out):
        a, b = args[-2], args[-1]
        la, lb = self.lab(a), self.lab(b)
        self.unify(la[1], lb[0])
        labels = [la[0], lb[1]]
        if len(args) == 3 and isinstance(args[0], torch.Tensor) and args[0].dim() > 0:
            bias = self.broadcast([args[0]], _shape(out))
            for x, y in zip(labels, bias, strict=False):
                if y and x:
                    self.unify(x, y)
        self.set(out, labels)
        self.macs.append(MacRecord([la[0], la[1], lb[1]], 1))

    op_addmm = op_mm

    def op_bmm(self, func, args, kwargs, out):
        a, b = args[-2], args[-1]
        la, lb = self.lab(a), self.lab(b)
        self.unify(la[0], lb[0])
        self.unify(la[2], lb[1])
        labels = [la[0], la[1], lb[2]]
        if len(args) == 3 and isinstance(args[0], torch.Tensor):
            for x, y in zip(labels, self.broadcast([args[0]], _shape(out)), strict=False):
                if x and y:
                    self.unify(x, y)
        self.set(out, labels)
        self.macs.append(MacRecord([la[0], la[1], la[2], lb[2]], 1))

    op_baddbmm = op_bmm

    def op_linear(self, func, args, kwargs, out):
        x, w = args[0], args[1]
        b = args[2] if len(args) > 2 else kwargs.get("bias")
        lx, lw = self.lab(x), self.lab(w)
        self.unify(lx[-1], lw[1])
        if isinstance(b, torch.Tensor):
            self.unify(self.lab(b)[0], lw[0])
        self.set(out, list(lx[:-1]) + [lw[0]])
        self.macs.append(MacRecord(list(lx) + [lw[0]], 1))

    def op_convolution(self, func, args, kwargs, out):
        x, w, b = args[0], args[1], args[2]
        transposed, groups = bool(args[6]), int(args[8])
        g = self.g
        lx, lw = self.lab(x), self.lab(w)
        g.fix(n for lb in lw[2:] for n in lb)
        w_out, w_in = (1, 0) if transposed else (0, 1)
        cin, cout = x.shape[1], out.shape[1]
        if groups == 1:
            self.unify(lx[1], lw[w_in])
            out_c = lw[w_out] if not transposed else lw[w_out]
        else:
            gnode = g.new(groups, ("group",))
            pin = g.fresh_label(cin // groups, fixed=True)
            pout = g.fresh_label(cout // groups, fixed=True)
            self.unify(lx[1], (gnode,) + pin, kinds=None)
            if transposed:
                self.unify(lw[0], (gnode,) + pin)
                self.unify(lw[1], pout)
            else:
                self.unify(lw[1], pin)
                self.unify(lw[0], (gnode,) + pout)
            out_c = (gnode,) + pout
        if isinstance(b, torch.Tensor):
            self.unify(self.lab(b)[0], out_c)
        labels = [lx[0] if x.shape[0] == out.shape[0] else g.fresh_label(out.shape[0]), out_c]
        labels += [g.fresh_label(s) for s in out.shape[2:]]
        self.set(out, labels)
        self.module_ops.append((self.module(), "conv", groups))
        k = math.prod(w.shape[2:])
        self.macs.append(MacRecord(list(labels) + [lw[w_in]], k) if not transposed
                         else MacRecord(list(lx) + [lw[1]], k))

    op__convolution = op_convolution

    def op_batch_norm(self, func, args, kwargs, out):
        x = args[0]
        lx = self.lab(x)
        c = x.shape[1] if x.dim() > 1 else x.shape[0]
        cl = lx[1] if x.dim() > 1 else lx[0]
        for a in args[1:]:
            if isinstance(a, torch.Tensor) and a.dim() == 1 and a.shape[0] == c:
                self.unify(self.lab(a)[0], cl)
                name = self.params.get(id(a))
                if name is not None and a is args[1]:
                    self.norm_weights.add(name)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for t in outs:
            if not isinstance(t, torch.Tensor):
                continue
            if t.shape == x.shape:
                self.set(t, list(lx))
            elif t.dim() == 1 and t.shape[0] == c:
                self.set(t, [cl])
            else:
                self.fresh(t)

    def op_native_layer_norm(self, func, args, kwargs, out):
        x, shape = args[0], list(args[1])
        k = len(shape)
        lx = self.lab(x)
        for a in args[2:4]:
            if isinstance(a, torch.Tensor):
                for la, lxx in zip(self.lab(a), lx[-k:], strict=False):
                    self.unify(la, lxx)
                if a is args[2] and id(a) in self.params:
                    self.norm_weights.add(self.params[id(a)])
        self.module_ops.append((self.module(), "layer_norm", lx[-k:]))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for t in outs:
            if isinstance(t, torch.Tensor):
                self.set(t, list(lx) if t.shape == x.shape else list(lx[:-k]) + [()] * (t.dim() - x.dim() + k))

    def op__fused_rms_norm(self, func, args, kwargs, out):
        x, shape = args[0], list(args[1])
        k = len(shape)
        lx = self.lab(x)
        w = args[2] if len(args) > 2 else None
        if isinstance(w, torch.Tensor):
            for la, lxx in zip(self.lab(w), lx[-k:], strict=False):
                self.unify(la, lxx)
        self.module_ops.append((self.module(), "layer_norm", lx[-k:]))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.set(t, list(lx) if t.shape == x.shape else list(lx[:-k]) + [()] * (t.dim() - x.dim() + k))

    def op_native_group_norm(self, func, args, kwargs, out):
        x, w, b = args[0], args[1], args[2]
        groups = int(args[6])
        g = self.g
        lx = self.lab(x)
        c = x.shape[1]
        if 1 < groups < c:
            gnode = g.new(groups, ("group",))
            self.unify(lx[1], (gnode,) + g.fresh_label(c // groups, fixed=True))
        for a in (w, b):
            if isinstance(a, torch.Tensor):
                self.unify(self.lab(a)[0], lx[1])
        if isinstance(w, torch.Tensor) and id(w) in self.params:
            self.norm_weights.add(self.params[id(w)])
        self.module_ops.append((self.module(), "group_norm", groups))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.set(t, list(lx)) if t.shape == x.shape else self.fresh(t)

    def op_sdpa(self, func, args, kwargs, out):
        q, k, v = args[0], args[1], args[2]
        g = self.g
        lq, lk, lv = self.lab(q), self.lab(k), self.lab(v)
        hi = q.dim() - 3  # index of the heads dim: (..., heads, tokens, head_dim)
        for i in range(hi):
            self.unify(lq[i], lk[i])
            self.unify(lq[i], lv[i])
        hq, hk = (lq[hi], lk[hi]) if hi >= 0 else ((), ())
        if hi >= 0:
            self.unify(lk[hi], lv[hi])
            if q.shape[hi] == k.shape[hi]:
                self.unify(hq, hk)
            elif q.shape[hi] % k.shape[hi] == 0:
                self.unify(hq, hk + g.fresh_label(q.shape[hi] // k.shape[hi]))
            else:
                g.fix(hq + hk)
            g.mark(hq + hk, "head")
        self.unify(lq[-1], lk[-1])
        g.fix(lq[-1] + lk[-1] + lv[-1] + lq[-2] + lk[-2])
        mask = kwargs.get("attn_mask")
        if mask is None and len(args) > 3 and isinstance(args[3], torch.Tensor):
            mask = args[3]
        score = list(lq[:-1]) + [lk[-2]]
        if isinstance(mask, torch.Tensor):
            ml = self.lab(mask)
            off = len(score) - mask.dim()
            for i, s in enumerate(mask.shape):
                if s > 1 and i + off >= 0:
                    self.unify(ml[i], score[i + off])
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.set(outs[0], list(lq[:-1]) + [lv[-1]])
        for t in outs[1:]:
            if isinstance(t, torch.Tensor):
                self.fresh(t)
        self.attention.append(AttentionRecord(self.module(), hq, hk, q.shape[-1]))
        self.macs.append(MacRecord(list(lq) + [lk[-2]], 1))
        self.macs.append(MacRecord(list(lq[:-1]) + [lk[-2], lv[-1]], 1))


def _module_hooks(model: nn.Module, stack: list[str]):
    handles = []
    for name, mod in model.named_modules():
        def pre(m, a, name=name):
            stack.append(name)

        def post(m, a, o, name=name):
            if stack and stack[-1] == name:
                stack.pop()
        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    return handles


def run_with_module_stack(model: nn.Module, fn):
    """Run ``fn()`` while tracking the innermost module; on error the PruningError names it."""
    stack: list[str] = []
    handles = _module_hooks(model, stack)
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        raise _WithModule(stack[-1] if stack else "<model>", e) from e
    finally:
        for h in handles:
            h.remove()


class _WithModule(Exception):
    def __init__(self, module: str, error: Exception):
        super().__init__(str(error))
        self.module, self.error = module, error


def trace(model: nn.Module, example_inputs: Any) -> TraceResult:
    """Trace one forward pass of ``model`` and return its dimension graph (see module docstring)."""
    from prunekit.measure import run_model
    params = {id(p): n for n, p in model.named_parameters(remove_duplicate=True)}
    buffers = {id(b): n for n, b in model.named_buffers(remove_duplicate=True)}
    stack: list[str] = []
    tracer = _Tracer(params, buffers, stack)
    for t in _tensors(example_inputs):
        tracer.lab(t)  # inputs: fresh fixed labels
    was_training = model.training
    handles = _module_hooks(model, stack)
    model.eval()
    try:
        with torch.no_grad(), no_mha_fastpath(), tracer:
            out = run_model(model, example_inputs)
    except Exception as e:  # noqa: BLE001
        raise PruningError(stack[-1] if stack else "<model>", "trace the forward pass",
                           f"{type(e).__name__}: {e}") from e
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for t in _tensors(out):  # model outputs keep their shape
        for lb in tracer.lab(t):
            tracer.g.fix(lb)
    res = TraceResult(tracer.g, tracer.param_labels, set(buffers.values()), tracer.macs, tracer.attention,
                      tracer.norm_weights, tracer.module_ops, out)
    tracer.labels.clear()
    return res
