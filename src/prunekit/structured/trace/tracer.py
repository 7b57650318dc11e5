"""The tracer: one forward pass under a ``TorchDispatchMode`` that labels every tensor dimension.

Each ATen op the model runs is handed to a rule (``registry.py``; the built-in rules are in
``rules/``) that states which input and output dimensions are the same units. Pointwise ops,
identities and factory ops are handled here. A rule that raises, or an op without a rule, fixes
every dimension it touches, so the trace is conservative where it does not understand the model.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
...                           torch.nn.Conv2d(8, 4, 3))
>>> [grp.size for grp in trace(net, (torch.randn(1, 3, 16, 16),)).groups()]
[8]
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from prunekit.errors import PruningError
from prunekit.measure import counting_macs, no_mha_fastpath, run_model
from prunekit.structured.trace.dims import DimGraph, Label
from prunekit.structured.trace.records import AttentionRecord, MacRecord, TraceResult
from prunekit.structured.trace.registry import lookup
from prunekit.structured.trace.tensors import flat_tensors

__all__ = ["Tracer", "trace", "run_with_module_stack"]

_IDENTITY = {"clone", "contiguous", "detach", "alias", "_to_copy", "lift_fresh", "lift_fresh_copy", "to",
             "_conj", "resolve_conj", "resolve_neg", "type_as", "copy", "dropout", "feature_dropout",
             "native_dropout", "zero_", "fill_", "_unsafe_view_copy", "view_copy_unused", "bernoulli_",
             "normal_", "uniform_", "positive", "masked_fill_", "requires_grad_"}
_ELEMENTWISE = {"hardswish", "hardsigmoid", "hardtanh", "relu6", "elu", "selu", "celu", "leaky_relu", "gelu", "silu",
                "mish", "softplus", "log_sigmoid_forward", "threshold", "rrelu_with_noise", "hardshrink",
                "softshrink", "glu_unused", "sigmoid", "tanh", "relu", "erf", "exp", "clamp", "clamp_min",
                "clamp_max", "pow", "rsqrt", "sqrt", "abs", "neg", "square", "sign", "round", "floor"}


class Tracer(TorchDispatchMode):
    """Labels every dimension of every tensor of one forward pass; rules read and write the labels."""

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
        for t in flat_tensors(args):
            for lb in self.lab(t):
                self.g.fix(lb, reason)
        for t in flat_tensors(out):
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

    def rule(self, func, args, kwargs, out) -> None:
        name = func._overloadpacket.__name__
        base = name.rstrip("_")
        tensor_args = [a for a in args if isinstance(a, torch.Tensor)]
        if isinstance(out, torch.Tensor) and (torch.Tag.pointwise in func.tags or base in _ELEMENTWISE) \
                or name in ("where", "masked_fill", "copy_", "lerp"):
            ts = [t for t in flat_tensors((args, kwargs)) if t.dim() > 0]
            first = out if isinstance(out, torch.Tensor) else ts[0]
            labels = self.broadcast(ts, list(first.shape))
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
        if not flat_tensors((args, kwargs)):  # factory ops
            for t in flat_tensors(out):
                self.fresh(t)
            return
        handler = lookup(func)
        if handler is None:
            self.fix_all((args, kwargs), out, f"no rule for aten.{name} in {self.module() or 'the model'}")
            return
        handler(self, func, args, kwargs, out)


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


def trace(model: nn.Module, example_inputs: Any, count_macs: bool = False) -> TraceResult:
    """Trace one forward pass of ``model`` and return its dimension graph (see module docstring).

    With ``count_macs`` the same pass is also counted by :func:`prunekit.measure.counting_macs`
    (``result.measured_macs``; None where the flop counter cannot count this model, which then gets a
    plain trace), which saves prune() a forward pass."""
    if count_macs:
        try:
            return _trace(model, example_inputs, count=True)
        except Exception:  # noqa: BLE001 - the flop counter's own failures; a real one recurs below
            pass
    return _trace(model, example_inputs, count=False)


def _trace(model: nn.Module, example_inputs: Any, count: bool) -> TraceResult:
    params = {id(p): n for n, p in model.named_parameters(remove_duplicate=True)}
    buffers = {id(b): n for n, b in model.named_buffers(remove_duplicate=True)}
    stack: list[str] = []
    tracer = Tracer(params, buffers, stack)
    for t in flat_tensors(example_inputs):
        tracer.lab(t)  # inputs: fresh fixed labels
    was_training = model.training
    handles = _module_hooks(model, stack)
    model.eval()
    # the flop counter is entered first, so the tracer sees each op before it and as the model called it
    counter = counting_macs(model) if count else nullcontext()
    try:
        with torch.no_grad(), no_mha_fastpath(), counter as counted, tracer:
            out = run_model(model, example_inputs)
    except Exception as e:  # noqa: BLE001
        if count:
            raise
        raise PruningError(stack[-1] if stack else "<model>", "trace the forward pass",
                           f"{type(e).__name__}: {e}") from e
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for t in flat_tensors(out):  # model outputs keep their shape
        for lb in tracer.lab(t):
            tracer.g.fix(lb)
    res = TraceResult(tracer.g, tracer.param_labels, set(buffers.values()), tracer.macs, tracer.attention,
                      tracer.norm_weights, tracer.module_ops, out)
    res.measured_macs = counted.macs if count else None
    tracer.labels.clear()
    return res
