"""``prunekit.prune`` and ``prunekit.groups``: dependency-aware structured pruning of any nn.Module.

The model is traced once (``trace/``) into coupled groups of prunable dimensions; each group's
units (channels/neurons, or attention heads) are scored (``importance.py``), the lowest are chosen
per group (``scope="local"``) or over all groups of a unit type (``scope="global"``, at most
``max_group_ratio`` of any group), and the surgery (``surgery.py``, ``heads.py``) builds new, smaller
weights and fixes every attribute. The pruned model is checked with a forward pass; on any error it
is restored exactly and :class:`prunekit.PruningError` names the module and operation.

>>> import torch, prunekit
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
...                           torch.nn.Conv2d(16, 8, 3))
>>> res = prunekit.prune(net, (torch.randn(1, 3, 16, 16),), ratio=0.5)
>>> net[0].out_channels, net[1].num_features, net[3].in_channels
(8, 8, 8)
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.compat import renamed
from prunekit.errors import PruningError
from prunekit.measure import count_macs, count_params, counting_macs, run_model
from prunekit.select import as_list, ignored_modules, ignored_params
from prunekit.structured.heads import fix_attention, sync_hf_config
from prunekit.structured.hf_save import guard_save_pretrained
from prunekit.structured.importance import Importance, get_importance
from prunekit.structured.rewrite import swap_rewritten, verify_swaps
from prunekit.structured.surgery import Snapshot, apply_keep, fix_module_attributes, sync_model_attributes
from prunekit.structured.trace import Group, TraceResult, flat_tensors, run_with_module_stack, trace
from prunekit.structured.width_free import SWAPS, swap_width_free

__all__ = ["prune", "groups", "PruneResult", "GroupList"]

MAX_GROUP_RATIO = 0.9   # global scope: never remove more than this fraction of one group


@dataclass
class PruneResult:
    """Parameters and MACs before/after, and the decision for every group."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    decisions: list[dict] = field(default_factory=list)
    attention: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    seconds: float = 0.0
    ratio: float | None = None
    skipped: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        """A JSON-able dict of every field plus ``macs_ratio`` and ``params_ratio``."""
        return {**asdict(self), "macs_ratio": round(self.macs_ratio, 6), "params_ratio": round(self.params_ratio, 6)}

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / max(1, self.macs_before)

    @property
    def params_ratio(self) -> float:
        return self.params_after / max(1, self.params_before)

    def __str__(self) -> str:
        pruned = [d for d in self.decisions if d["removed"]]
        lines = [f"params {self.params_before:,} -> {self.params_after:,} ({self.params_ratio:.3f}x), "
                 f"MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_ratio:.3f}x), "
                 f"{len(pruned)}/{len(self.decisions)} groups pruned in {self.seconds:.2f}s"]
        for d in pruned[:20]:
            lines.append(f"  group {d['group']} ({d['unit']}): {d['size']} -> {d['kept']}  [{d['members'][0]}, ...]")
        if len(pruned) > 20:
            lines.append(f"  ... {len(pruned) - 20} more")
        for sk in self.skipped:
            lines.append(f"  left as is: every {sk['class']} (first failure in {sk['module']}: {sk['reason']})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"params_before": self.params_before, "params_after": self.params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after, "seconds": round(self.seconds, 3),
                "decisions": [{k: v for k, v in d.items() if k != "removed_index"} for d in self.decisions],
                "skipped": self.skipped}


class GroupList(list):
    """The coupled groups of a model; ``print()`` it to see what moves together.

    It also keeps the trace it came from, so ``prune(model, inputs, groups=this)`` does not trace again."""

    trace: TraceResult | None = None
    key: tuple | None = None

    def __str__(self) -> str:
        if not self:
            return "no prunable groups"
        return "\n".join(repr(g) for g in self)


def groups(model: nn.Module, example_inputs: Any, ignore: Iterable = ()) -> GroupList:
    """The coupled groups of prunable dimensions of ``model`` (it is not modified): the ones ``prune``
    would see, traced with the same forward fix-ups. Pass the result to ``prune(..., groups=)`` to
    reuse its trace (one forward pass fewer).

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> g = groups(net, (torch.randn(1, 4),))
    >>> print(g)
    Group 0 (8 channels): 0.weight[0], 0.bias[0], 2.weight[1]
    >>> prune(net, (torch.randn(1, 4),), ratio=0.5, groups=g).params_after   # 4*4+4 + 4*2+2
    30
    """
    ignore = _as_list(ignore)
    classes = _swap_forwards(model, example_inputs)
    try:
        tr = trace(model, example_inputs, count_macs=not model.training)
        _fix_kept(model, tr, ignore)
    finally:
        _restore_classes(classes)
    out = GroupList(tr.groups())
    out.trace, out.key = tr, _trace_key(model, example_inputs, ignore)
    return out


_as_list = as_list


def _trace_key(model: nn.Module, example_inputs: Any, ignore: list) -> tuple:
    """What a trace depends on and ``prune(groups=)`` can check cheaply: the model object, its mode, its
    parameters (identity and shape), the inputs' shapes and dtypes, and ``ignore``."""
    return (id(model), model.training,
            tuple((n, id(p), tuple(p.shape)) for n, p in model.named_parameters()),
            tuple((tuple(t.shape), t.dtype) for t in flat_tensors(example_inputs)),
            tuple(i if isinstance(i, str) else id(i) for i in ignore))


def _swap_forwards(model: nn.Module, example_inputs: Any) -> list[tuple[nn.Module, type]]:
    """Give forwards that read sizes from the input width ones that read them from the weights (same
    outputs), so the trace sees their heads. Returns every module's class before, for
    :func:`_restore_classes`."""
    classes = [(m, m.__class__) for m in model.modules()]
    for m in model.modules():
        swap_width_free(m)
    try:  # other width-from-input idioms: rewritten forwards, kept only where outputs are unchanged
        skip = set(UNSUPPORTED) | {f"{c.__module__}.{c.__qualname__}" for c in (*SWAPS, *SWAPS.values())}
        verify_swaps(model, swap_rewritten(model, skip=skip), lambda: run_model(model, example_inputs))
    except Exception:
        _restore_classes(classes)
        raise
    return classes


def _restore_classes(classes: list[tuple[nn.Module, type]]) -> None:
    for m, c in classes:
        m.__class__ = c


def _fix_kept(model: nn.Module, tr: TraceResult, ignore: list) -> None:
    """Fix what must keep its size: ``ignore``, modules the surgery cannot update, classifier outputs."""
    _apply_ignore(model, tr, ignore)
    _unsupported(model, tr)
    _head_out_dims(model, tr)


def _apply_ignore(model: nn.Module, tr: TraceResult, ignore: Iterable) -> None:
    names = ignored_params(model, ignore)
    names += [n for n in tr.param_labels if any(n == e for e in _as_list(ignore) if isinstance(e, str))]
    tr.fix_params(names)


# Modules whose forward derives sizes in ways the surgery cannot update: their dims are kept.
UNSUPPORTED = {
    "torchvision.models.swin_transformer.ShiftedWindowAttentionV2": "head_dim = input width // num_heads",
    "timm.layers.attention_pool.AttentionPoolLatent": "output reshaped to the input width",
}


def _unsupported(model: nn.Module, tr: TraceResult) -> None:
    names = []
    for path, m in model.named_modules():
        cls = getattr(type(m), "_width_free_base", type(m))
        if f"{cls.__module__}.{cls.__qualname__}" in UNSUPPORTED or type(m) in SWAPS:  # not swappable
            names += [f"{path}.{n}" if path else n for n, _ in m.named_parameters()]
    tr.fix_params(names)


def _output_layers(model: nn.Module) -> list[str]:
    """Parameters of the layers that produce the model's outputs (fixed anyway by the trace)."""
    names = []
    get_cls = getattr(model, "get_classifier", None)
    if callable(get_cls):
        try:
            head = get_cls()
        except Exception:  # noqa: BLE001
            head = None
        if isinstance(head, nn.Module):
            for path, m in model.named_modules():
                if m is head:
                    names += [f"{path}.{n}" if path else n for n, p in m.named_parameters()
                              if p.dim() >= 1]
    return names


def _head_out_dims(model: nn.Module, tr: TraceResult) -> None:
    """Keep the output dimension of classifier heads (they may feed e.g. a distillation average)."""
    for name in _output_layers(model):
        labels = tr.param_labels.get(name)
        if labels:
            tr.fix_label(labels[0])


def _score(groups_: list[Group], imp: Importance, params: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for grp in groups_:
        s = imp(grp, params)
        s = torch.as_tensor(s, dtype=torch.float64).flatten()
        if s.numel() != grp.size:
            raise ValueError(f"importance {type(imp).__name__} returned {s.numel()} scores for a group of "
                             f"{grp.size} units")
        out.append(torch.nan_to_num(s, nan=0.0))
    return out


def _round(kept: int, size: int, round_to: int | None) -> int:
    if round_to and round_to > 1 and size > round_to:
        kept = max(round_to, int(round(kept / round_to)) * round_to)
    return max(1, min(size, kept))


def _standardise(s: torch.Tensor) -> torch.Tensor:
    """Scores made comparable across groups: z-scores within the group.

    Raw magnitudes are not comparable between a 3x3 conv filter and a LayerNorm-coupled residual
    stream, and mean-normalised scores are much tighter for groups whose units own many weights, so
    such groups would never be pruned. Standardising lets a group lose more units exactly when its
    score distribution has a longer low tail (e.g. many near-zero BN scales after training).
    """
    if s.numel() < 2:
        return torch.zeros_like(s)
    std = s.std()
    z = (s - s.mean()) / std if float(std) > 1e-12 * max(1.0, float(s.abs().mean())) else torch.zeros_like(s)
    dead = s.abs() <= 1e-6 * float(s.abs().max())  # units that do nothing go first, whatever their group
    return torch.where(dead, z - 1e6, z)


def _decide(groups_: list[Group], scores: list[torch.Tensor], ratio: float, scope: str,
            round_to: int | None, max_group_ratio: float) -> list[int]:
    """Number of units to keep per group."""
    if scope == "local":
        return [_round(g.size - min(int(math.floor(ratio * g.size)),
                                    g.size - max(1, math.ceil(g.size * (1 - max_group_ratio)))), g.size,
                       round_to if g.unit == "channels" else None) for g in groups_]
    kept = [g.size for g in groups_]
    for unit in ("channels", "heads"):
        idx = [i for i, g in enumerate(groups_) if g.unit == unit]
        if not idx:
            continue
        rt = round_to if unit == "channels" and round_to and round_to > 1 else 1
        total = sum(groups_[i].size for i in idx)
        budget = int(round(ratio * total))
        floor = {i: max(1, math.ceil(groups_[i].size * (1 - max_group_ratio))) for i in idx}
        if rt == 1:
            _take_lowest(groups_, scores, idx, floor, budget, kept)
            continue
        pool = []  # (score, group, units removed together): chunks keep each group a multiple of round_to
        for i in idx:
            norm = _standardise(scores[i]).sort().values.tolist()
            size = groups_[i].size
            step = rt if size > rt else 1
            start, first = 0, (size % step) or step
            while start < size:
                width = first if start == 0 else step
                pool.append((max(norm[start:start + width]), i, width))
                start += width
        pool.sort(key=lambda t: t[0])
        for _, i, width in pool:
            if budget <= 0:
                break
            if kept[i] - width >= floor[i] and budget >= width / 2:
                kept[i] -= width
                budget -= width
        if rt > 1:
            for i in idx:
                kept[i] = _round(kept[i], groups_[i].size, rt)
    return kept


def _take_lowest(groups_: list[Group], scores: list[torch.Tensor], idx: list[int], floor: dict[int, int],
                 budget: int, kept: list[int]) -> None:
    """Global selection one unit at a time: the ``budget`` lowest standardised scores among each group's
    units above its floor (what the chunked loop of :func:`_decide` does with chunks of one, vectorised)."""
    cand, owner = [], []
    for i in idx:
        n = groups_[i].size - floor[i]
        if n > 0:
            cand.append(_standardise(scores[i]).sort().values[:n])
            owner.append(torch.full((n,), i, dtype=torch.long))
    if not cand or budget <= 0:
        return
    order = torch.cat(cand).argsort(stable=True)[:budget]  # ties: earlier groups first, as the loop's sort
    for i, n in zip(*torch.cat(owner)[order].unique(return_counts=True), strict=True):
        kept[int(i)] -= int(n)


def _keep_sets(groups_: list[Group], scores: list[torch.Tensor], kept: list[int]) -> dict[int, torch.Tensor]:
    keep = {}
    for g, s, k in zip(groups_, scores, kept, strict=False):
        if k < g.size:
            keep[g.root] = s.argsort(descending=True)[:k].sort().values
    return keep


def _shapes(out: Any) -> list[tuple]:
    return [tuple(t.shape) for t in flat_tensors(out)]


MAX_SKIPPED_CLASSES = 8  # on_failure="skip": give up after this many module classes were left as they are


def prune(model: nn.Module, example_inputs: Any, *, ratio: float | None = None, target_macs: float | None = None,
          criterion: str | Importance | Callable = "l2", scope: str = "global",
          units: Iterable[str] = ("channels", "heads"), ignore: Iterable = (), round_to: int | None = None,
          calib: Any = None, max_group_ratio: float = MAX_GROUP_RATIO, on_failure: str = "raise",
          groups: GroupList | None = None, importance: str | Importance | Callable | None = None) -> PruneResult:
    """Remove the least important channels, neurons and heads of ``model`` in place.

    Exactly one of ``ratio`` (fraction of units removed) or ``target_macs`` (fraction of MACs kept,
    reached by search to within 2%) is given. ``criterion`` scores the units: ``"l2"`` (default),
    ``"l1"``, ``"bn_scale"``, ``"taylor"`` (needs ``calib``), ``"random"``, or an ``Importance`` /
    callable (``importance=`` is its old name, deprecated). ``ignore`` (see :mod:`prunekit.select`)
    holds modules, module classes, module paths, fnmatch patterns or parameter names whose
    dimensions stay as they are. The model's outputs keep their
    shape; on failure the model is restored and :class:`prunekit.PruningError` is raised.

    ``on_failure="skip"`` instead leaves every module of the failing module's class as it is and
    tries again (a custom module that hard-codes a width is typical); ``result.skipped`` lists
    them. Failures inside torch's own layers are still raised: their cause lies elsewhere.

    ``groups``: the result of :func:`groups` on this model, these inputs' shapes and this ``ignore``,
    whose trace is then reused instead of tracing again (anything else raises a PruningError).

    >>> import torch, prunekit
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    >>> res = prunekit.prune(net, (torch.randn(2, 8),), ratio=0.25, scope="local")
    >>> net[0].out_features, net(torch.randn(2, 8)).shape
    (24, torch.Size([2, 4]))
    """
    if on_failure not in ("raise", "skip"):
        raise ValueError(f"on_failure must be 'raise' or 'skip', got {on_failure!r}")
    criterion = renamed("prune", "importance", "criterion", importance, criterion, "l2")
    kwargs = dict(ratio=ratio, target_macs=target_macs, importance=criterion, scope=scope, units=units,
                  round_to=round_to, calib=calib, max_group_ratio=max_group_ratio)
    ignore = _as_list(ignore)
    ignored_modules(model, ignore)  # an unknown name is refused before any tracing
    if groups is not None and (groups.trace is None or groups.key != _trace_key(model, example_inputs, ignore)):
        raise PruningError("<model>", "prune with groups=", "these groups were traced from another model, "
                           "parameter shapes, mode (train/eval), input shapes or ignore=; call "
                           "prunekit.groups(model, example_inputs, ignore=...) again, or leave groups= out")
    skipped: list[dict] = []
    t0 = time.perf_counter()
    classes = _swap_forwards(model, example_inputs)  # undone if pruning fails
    while True:
        try:
            res = _prune_once(model, example_inputs, ignore=ignore + [s_["type"] for s_ in skipped],
                              reuse=None if skipped or groups is None else groups.trace, **kwargs)
        except Exception as e:
            cls = _skippable(model, e) if on_failure == "skip" and isinstance(e, PruningError) else None
            if cls is None or any(s_["type"] is cls for s_ in skipped) or len(skipped) >= MAX_SKIPPED_CLASSES:
                _restore_classes(classes)
                raise
            skipped.append({"type": cls, "class": f"{cls.__module__}.{cls.__qualname__}", "module": e.module,
                            "reason": e.reason})
            continue
        res.skipped = [{k: v for k, v in s_.items() if k != "type"} for s_ in skipped]
        res.seconds = time.perf_counter() - t0
        return res


def _skippable(model: nn.Module, err: PruningError) -> type | None:
    """The class of the module a failure happened in, unless it is one of torch's own layers."""
    mod = dict(model.named_modules()).get(err.module) if err.module and err.module != "<model>" else None
    if mod is None or type(mod).__module__.startswith("torch.nn"):
        return None
    return type(mod)


def _prune_once(model: nn.Module, example_inputs: Any, *, ratio, target_macs, importance, scope, units, ignore,
                round_to, calib, max_group_ratio, reuse: TraceResult | None = None) -> PruneResult:
    t0 = time.perf_counter()
    if (ratio is None) == (target_macs is None):
        raise ValueError("give exactly one of ratio= or target_macs=")
    if ratio is not None and not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if target_macs is not None and not 0 < target_macs <= 1:
        raise ValueError(f"target_macs is the fraction of MACs to keep, in (0, 1], got {target_macs}")
    if scope not in ("global", "local"):
        raise ValueError(f"scope must be 'global' or 'local', got {scope!r}")
    units = tuple(units)
    for u in units:
        if u not in ("channels", "heads"):
            raise ValueError(f"units must be 'channels' and/or 'heads', got {u!r}")
    imp = get_importance(importance)

    count = not model.training  # the trace and the check run in eval: their passes count as the model's MACs
    tr = reuse if reuse is not None else trace(model, example_inputs, count_macs=count)
    _fix_kept(model, tr, ignore)
    all_groups = tr.groups()
    grps = [g for g in all_groups if g.unit in units]
    params = dict(model.named_parameters())
    params_before = count_params(model)
    with torch.no_grad():
        ref_shapes = _shapes(tr.outputs)
    macs_before = tr.measured_macs if tr.measured_macs is not None else _count_macs(model, example_inputs, tr, {})
    # where the trace's own MAC records add up to the flop counter's count, they cover every counted op and
    # give the pruned count exactly (tests/structured/test_coverage.py checks it); else the check pass is counted
    count = count and macs_before != tr.macs_total()
    analytic = not count and tr.measured_macs is not None
    imp.prepare(model, tr, example_inputs, calib)
    scores = _score(grps, imp, params)

    def plan(r: float, r_heads: float | None = None) -> tuple[list[int], dict]:
        kept = _decide(grps, scores, r, scope, round_to, max_group_ratio)
        if r_heads is not None:  # heads held at their own ratio, channels at r
            heads = _decide(grps, scores, r_heads, scope, round_to, max_group_ratio)
            kept = [h if g.unit == "heads" else k for g, k, h in zip(grps, kept, heads, strict=True)]
        return kept, _keep_sets(grps, scores, kept)
    plan.both_units = len({g.unit for g in grps}) == 2  # type: ignore[attr-defined]

    if target_macs is None:
        kept, keep = plan(float(ratio))
        chosen = float(ratio)
    else:
        kept, keep, chosen = _search(tr, plan, target_macs, max_group_ratio)

    pruned_units = sorted({g.unit for g, k in zip(grps, kept, strict=False) if k < g.size})
    op = "prune " + (" and ".join(pruned_units) or "nothing")
    snap = Snapshot(model)
    attn_log, cfg_changes, macs_after = [], {}, macs_before
    if keep:
        attn_log, cfg_changes, macs_after = _surgery(model, tr, keep, example_inputs, ref_shapes, op, snap, count,
                                                     analytic)
        if target_macs is not None:
            kept, keep, chosen, macs_after = _refine(model, example_inputs, tr, plan, target_macs, macs_before,
                                                     macs_after, snap, kept, keep, chosen, ref_shapes, op,
                                                     max_group_ratio, count, analytic)
    decisions = []
    for g, _k in zip(grps, kept, strict=False):
        removed = sorted(set(range(g.size)) - set(keep[g.root].tolist())) if g.root in keep else []
        decisions.append({"group": g.id, "unit": g.unit, "size": g.size, "kept": g.size - len(removed),
                          "removed": removed, "members": [f"{o.name}[{o.dim}]" for o in g.occurrences
                                                          if not o.is_buffer]})
    return PruneResult(params_before, count_params(model), macs_before, macs_after, decisions, attn_log,
                       cfg_changes, time.perf_counter() - t0, chosen)


def _count_macs(model: nn.Module, example_inputs: Any, tr: TraceResult, keep: dict) -> int:
    """MACs from ``torch.utils.flop_counter``; the trace's own count where the flop counter fails."""
    try:
        return count_macs(model, example_inputs)
    except Exception:  # noqa: BLE001 - e.g. FlopCounterMode's module tracker on some attention pools
        return tr.macs_after(keep)



def _surgery(model, tr, keep, example_inputs, ref_shapes, op: str, snap, count: bool, analytic: bool = False):
    """Remove the units not in ``keep`` and fix every attribute; on any error restore ``snap`` and raise.
    Returns the attention log, the config changes and the MACs after: the trace's records if ``analytic``,
    else counted on the check's pass if ``count``, else (or where the flop counter fails) by a pass of their own."""
    try:
        shapes = apply_keep(model, tr, keep)
        fix_module_attributes(model, tr, keep, shapes)
        attn_log = fix_attention(model, tr, keep)
        cfg_changes = sync_hf_config(model, tr, keep)
        sync_model_attributes(model)
        macs = _check(model, example_inputs, ref_shapes, op, count)
        guard_save_pretrained(model)
    except PruningError as e:
        snap.restore()
        split = _pruned_split(tr, keep)
        if split is None:
            raise
        where = split[0] or f"<model> ({type(model).__name__}.forward)"
        raise PruningError(where, op, f"{e.reason}; its forward calls torch.split(x, {split[1]}) on a dim that "
                           f"was pruned to {split[2]}, and a literal split size cannot follow the pruning: use "
                           "torch.chunk or a size read from the layer's weights, or put the layer producing x "
                           "in ignore=") from e
    except Exception as e:  # noqa: BLE001
        snap.restore()
        raise PruningError("<model>", op, f"{type(e).__name__}: {e}") from e
    if analytic:
        macs = tr.macs_after(keep)
    elif macs is None:
        macs = _count_macs(model, example_inputs, tr, keep)
    return attn_log, cfg_changes, macs


def _pruned_split(tr: TraceResult, keep: dict) -> tuple[str, int, int] | None:
    """The first ``torch.split(x, size)`` (fixed size) whose dim the surgery made smaller."""
    for mod, kind, info in tr.module_ops:
        if kind == "split":
            size, label = info
            full, kept = tr.graph.kept_size(label, {}), tr.graph.kept_size(label, keep)
            if kept < full:
                return mod, size, kept
    return None

def _check(model: nn.Module, example_inputs: Any, ref_shapes: list[tuple], op: str,
           count: bool = False) -> int | None:
    """Run the pruned model once (eval, no grad) and compare its output shapes with ``ref_shapes``.
    With ``count``, the pass is counted too: its MACs are returned (None where the flop counter fails)."""
    was = model.training
    model.eval()
    macs = None
    try:
        if count:
            try:
                with torch.no_grad(), counting_macs(model) as c:
                    out = run_model(model, example_inputs)
                macs = c.macs
            except Exception:  # noqa: BLE001 - a real failure recurs in the plain pass below
                count = False
        if not count:
            with torch.no_grad():
                out = run_with_module_stack(model, lambda: run_model(model, example_inputs))
    except Exception as e:  # noqa: BLE001
        mod = getattr(e, "module", "<model>")
        err = getattr(e, "error", e)
        hint = f"; pass ignore=[{mod!r}] to leave this module as it is" if mod else ""
        raise PruningError(mod or "<model>", op, f"forward fails after surgery ({type(err).__name__}: {err}){hint}") \
            from e
    finally:
        model.train(was)
    if _shapes(out) != ref_shapes:
        raise PruningError("<model>", op, f"output shapes changed from {ref_shapes} to {_shapes(out)}")
    return macs


def _search(tr: TraceResult, plan, target: float, max_group_ratio: float):
    """Bisection on the ratio so the (analytic) MACs kept match ``target``.

    Channels and heads share the ratio, and one head is a coarse step: where a head's step jumps
    across the target, the heads are held at the counts on either side of the jump and the channels
    alone are searched again, so the target is still met closely.
    """
    best, lo, hi = _bisect(tr, plan, target, max_group_ratio)
    if abs(best[3] - target) >= 0.002 and getattr(plan, "both_units", False):
        for r_heads in (lo, hi):
            other = _bisect(tr, lambda r, h=r_heads: plan(r, h), target, max_group_ratio)[0]
            if abs(other[3] - target) < abs(best[3] - target):
                best = other
    return best[0], best[1], best[2]


def _bisect(tr: TraceResult, plan, target: float, max_group_ratio: float):
    """``((kept, keep, ratio, fraction) closest to target, lo, hi)``: the final bracket of the ratio."""
    total = max(1, tr.macs_total())
    lo, hi = 0.0, max_group_ratio
    best = None
    for _ in range(30):
        mid = (lo + hi) / 2
        kept, keep = plan(mid)
        frac = tr.macs_after(keep) / total
        if best is None or abs(frac - target) < abs(best[3] - target):
            best = (kept, keep, mid, frac)
        if abs(frac - target) < 0.002:
            break
        if frac > target:
            lo = mid
        else:
            hi = mid
    return best, lo, hi


def _refine(model, example_inputs, tr, plan, target, macs_before, macs_after, snap, kept, keep, chosen,
            ref_shapes, op, max_group_ratio, count, analytic):
    """The analytic MAC count misses some ops (norms, activations): correct with measured MACs."""
    goal = target
    for _ in range(4):
        frac = macs_after / macs_before
        if abs(frac - target) <= 0.02 * target:
            break
        est = tr.macs_after(keep) / max(1, tr.macs_total())
        goal = max(1e-3, goal + (target - frac) * (est / max(frac, 1e-9)))
        snap.restore()
        kept, keep, chosen = _search(tr, plan, goal, max_group_ratio)
        _, _, macs_after = _surgery(model, tr, keep, example_inputs, ref_shapes, op, snap, count, analytic)
    return kept, keep, chosen, macs_after
