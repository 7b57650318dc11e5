"""The rule registry: which function tells the tracer how an ATen op couples its tensors' dimensions.

A rule is ``fn(tr, func, args, kwargs, out) -> None``. It reads the input labels with ``tr.lab(t)``,
states equalities with ``tr.unify(a, b)``, fixes dimensions that must not be pruned with
``tr.g.fix(label)`` and gives every output its labels with ``tr.set(t, labels)`` (or ``tr.fresh(t)``
for new, unrelated dimensions). Register it under the op's name (``"view"``, ``"mm"``) or, for an
op outside ATen, under ``"namespace::name"``. A later registration of the same name wins, so a
user's rule replaces a built-in one. Ops with no rule fix all their dimensions: always safe.

Pointwise ops (``torch.Tag.pointwise``), identities (``clone``, ``dropout``) and factories are
handled by the tracer itself and never reach the registry.

A custom op that keeps its input's shape, registered so its channels stay prunable:

>>> import torch, prunekit
>>> from prunekit.structured.trace import rule
>>> @torch.library.custom_op("prunekit_doc::scale", mutates_args=())
... def scale(x: torch.Tensor) -> torch.Tensor:
...     return x * 2
>>> @scale.register_fake
... def _(x):
...     return torch.empty_like(x)
>>> class Net(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)
...     def forward(self, x):
...         return self.b(scale(self.a(x)))
>>> len(prunekit.groups(Net(), (torch.randn(1, 4),)))   # unknown op: its dims are fixed
0
>>> @rule("prunekit_doc::scale")
... def same_labels(tr, func, args, kwargs, out):
...     tr.set(out, list(tr.lab(args[0])))
>>> len(prunekit.groups(Net(), (torch.randn(1, 4),)))
1
>>> unregister("prunekit_doc::scale")
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["rule", "unregister", "lookup", "op_key", "Rule"]

Rule = Callable[..., None]  # (tracer, func, args, kwargs, out) -> None

_BY_NAME: dict[str, Rule] = {}
_BY_MATCH: list[tuple[Callable[[str], bool], Rule]] = []
_CACHE: dict[Any, Rule | None] = {}


def op_key(func: Any) -> str:
    """The registry key of an ATen/prims op overload: its name, or ``namespace::name`` outside ATen."""
    packet = func._overloadpacket
    name = packet.__name__
    ns = getattr(func, "namespace", "aten")
    return name if ns in ("aten", "prims") else f"{ns}::{name}"


def rule(*names: str, match: Callable[[str], bool] | None = None) -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule for ``names`` (exact keys) or for every op whose
    key ``match(key)`` accepts (tried after all exact names, in registration order)."""
    if not names and match is None:
        raise ValueError("rule() needs op names or match=")

    def deco(fn: Rule) -> Rule:
        for n in names:
            _BY_NAME[n] = fn
        if match is not None:
            _BY_MATCH.append((match, fn))
        _CACHE.clear()
        return fn
    return deco


def unregister(*names: str) -> None:
    """Remove the rules registered under ``names`` (ops without a rule fix their dimensions)."""
    for n in names:
        _BY_NAME.pop(n, None)
    _CACHE.clear()


def lookup(func: Any) -> Rule | None:
    """The rule for an op overload, or None."""
    try:
        return _CACHE[func]
    except KeyError:
        pass
    key = op_key(func)
    fn = _BY_NAME.get(key)
    if fn is None:
        fn = next((f for m, f in _BY_MATCH if m(key)), None)
    _CACHE[func] = fn
    return fn
