"""Width-free forwards by rewriting: attention code that reads its width from the input, made to read it from weights.

Many attention modules (timm's EVA, BEiT, CaiT, CoaT, ConViT, DaViT, Twins, PVT-v2, MetaFormer, ...)
reshape with the *input* width: ``qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads)`` and
``x.transpose(1, 2).reshape(B, N, C)``. Right for a dense model, wrong as soon as heads or the
residual stream are pruned. Instead of one hand-written subclass per class (see ``width_free.py``),
this module rewrites these idioms in the source of the class's own methods (``forward`` and the
helpers it calls):

- ``C // self.num_heads`` (or ``// self.groups``) inside a reshape/view becomes ``-1``, or, where
  ``-1`` is taken or the value is kept in a variable, the head size read from the q/k/v weights
  (:func:`head_dim`);
- a ``.reshape(..)``/``.view(..)`` whose last size is the input width ``C`` (``x.transpose(1, 2)
  .reshape(B, N, C)``) ends in ``-1`` instead;
- ``.reshape(B, C, H, W)`` back to a feature map (LambdaNet) becomes ``.reshape(B, -1, H, W)``;
- a size ``C * ...`` (VOLO's ``.reshape(B, C * k * k, h * w)`` before ``fold``) becomes ``-1``;
- ``.reshape(B, C, -1)`` of a feature map (PVT-v2's and Twins' spatial reduction) becomes ``.flatten(2)``;
- ``.reshape(B, -1, self.dim_out)`` of ``(B, ..., heads, head_dim)`` (MViTv2, Hiera) becomes
  ``.flatten(-2).flatten(1, -2)``: heads and head size merged, every dimension between into one.

The result is a subclass with the same parameters and state dict. It is *only used where its outputs
equal the original's* on the model's own example input (checked by the caller, ``verify_swaps``), so
a rewrite that changes a result is never kept. Rewritten classes live in this module's namespace
under an encoded name, so ``torch.save``/``prunekit.save`` of a pruned model pickles and unpickles
them (``__getattr__`` below rebuilds the class on import).

>>> import torch
>>> from timm.models.beit import Attention
>>> cls = rewritten(Attention)
>>> cls.__name__, issubclass(cls, Attention)
('WF__timm__models__beit__Attention', True)
>>> attn = Attention(32, num_heads=4).eval()
>>> x = torch.randn(2, 5, 32)
>>> ref = attn(x)
>>> attn.__class__ = cls
>>> bool(torch.equal(attn(x), ref))
True
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys
import textwrap
from typing import Any

import torch
from torch import nn

__all__ = ["head_dim", "rewritten", "swap_rewritten", "verify_swaps"]

PREFIX = "WF"
_HEAD_DIM = re.compile(r"\bC\s*//\s*self\.(num_heads|groups)\b")
_CALL = re.compile(r"\.(reshape|view)\(([^()]*)\)")
_LAST_C = re.compile(r",\s*C\s*$")
_MAP_C = re.compile(r"^(\s*B\s*,\s*)C(\s*,\s*H\s*,\s*W\s*)$")
_SCALED_C = re.compile(r"(?<=,)\s*C\s*\*[^,]*")
_MINUS_ONE = re.compile(r"(?<![\w.])-\s*1\b")
_FLATTEN = re.compile(r"\.reshape\(\s*B\s*,\s*C\s*,\s*-1\s*\)")
_MERGE_HEADS = re.compile(r"\.reshape\(\s*B\s*,\s*-1\s*,\s*self\.\w+\s*\)")
_HELPER = '__import__("prunekit.structured.rewrite").structured.rewrite.head_dim(self, C)'
_CACHE: dict[type, type | None] = {}


def head_dim(module: nn.Module, width: int) -> int:
    """Head size read from ``module``'s q/k/v projection weights (fused ``qkv``, ``q``, ``kv``), else from ``width``.

    What ``C // self.num_heads`` becomes where ``-1`` cannot stand in for it (a reshape that already
    infers another size, or a value kept in a variable).
    """
    heads = module.num_heads
    for name, parts in (("qkv", 3), ("q", 1), ("kv", 2), ("k", 1)):
        w = getattr(getattr(module, name, None), "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() >= 2 and w.shape[0] % (parts * heads) == 0:
            return w.shape[0] // (parts * heads)
    return width // heads


def _encode(cls: type) -> str:
    return "__".join([PREFIX, *cls.__module__.split("."), cls.__qualname__])


def _rewrite_call(m: re.Match) -> str:
    method, args = m.group(1), m.group(2)
    infers = bool(_MINUS_ONE.search(args))
    if not infers and _HEAD_DIM.search(args):  # reshape(B, N, 3, self.num_heads, C // self.num_heads)
        args, infers = _HEAD_DIM.sub("-1", args, count=1), True
    if not infers and _LAST_C.search(args):  # x.transpose(1, 2).reshape(B, N, C)
        args = _LAST_C.sub(", -1", args)
    elif not infers and _MAP_C.match(args):  # back to a feature map: out.reshape(B, C, H, W)
        args = _MAP_C.sub(r"\g<1>-1\g<2>", args)
    elif not infers and _SCALED_C.search(args):  # VOLO's fold input: x.reshape(B, C * k * k, h * w)
        args = _SCALED_C.sub(" -1", args, count=1)
    return f".{method}({args})"


def _rewrite_source(src: str) -> str | None:
    """The method's source with the width-from-input idioms replaced, or None when it has none."""
    new = _MERGE_HEADS.sub(".flatten(-2).flatten(1, -2)", _FLATTEN.sub(".flatten(2)", src))
    new = _CALL.sub(_rewrite_call, new)
    new = _HEAD_DIM.sub(lambda m: _HELPER if m.group(1) == "num_heads" else m.group(0), new)
    return new if new != src else None


def rewritten(cls: type) -> type | None:
    """The width-free subclass of ``cls`` (cached), or None when its forward has no idiom to rewrite."""
    if cls in _CACHE:
        return _CACHE[cls]
    _CACHE[cls] = None
    if "." in cls.__qualname__ or cls.__module__ not in sys.modules:
        return None
    mod_globals = sys.modules[cls.__module__].__dict__
    methods: dict[str, Any] = {}
    for attr, fn in vars(cls).items():  # forward and the helpers it calls (e.g. ConViT's get_attention)
        if not inspect.isfunction(fn) or (attr.startswith("__") and attr != "__call__"):
            continue
        try:
            new = _rewrite_source(textwrap.dedent(inspect.getsource(fn)))
        except (OSError, TypeError):
            continue
        if new is None:
            continue
        ns: dict[str, Any] = {}
        try:
            exec(compile(new, f"<prunekit width-free {cls.__module__}.{cls.__qualname__}.{attr}>", "exec"),
                 mod_globals, ns)
        except Exception:  # noqa: BLE001 - a source we cannot recompile is simply not rewritten
            return None
        if fn.__name__ not in ns:
            return None
        methods[attr] = ns[fn.__name__]
    if not methods:
        return None
    name = _encode(cls)
    sub = type(name, (cls,), {**methods, "__module__": __name__, "__qualname__": name,
                              "_width_free_base": cls, "__doc__": f"{cls.__qualname__} with a width-free forward."})
    _CACHE[cls] = sub
    return sub


def __getattr__(name: str) -> type:
    """Rebuild a rewritten class by its encoded name (what pickle asks for when loading a pruned model)."""
    parts = name.split("__")
    if len(parts) < 3 or parts[0] != PREFIX:
        raise AttributeError(name)
    base = getattr(importlib.import_module(".".join(parts[1:-1])), parts[-1])
    cls = rewritten(base)
    if cls is None:
        raise AttributeError(f"{name}: {base} has no width-free rewrite in this version of its library")
    return cls


def swap_rewritten(model: nn.Module, skip: set[str] = frozenset()) -> list[tuple[nn.Module, type]]:
    """Give every module whose class has a rewrite the rewritten class; returns ``[(module, old class)]``.

    ``skip``: qualified class names to leave alone.
    """
    swapped = []
    for m in model.modules():
        cls = type(m)
        if getattr(cls, "_width_free_base", None) is not None or f"{cls.__module__}.{cls.__qualname__}" in skip:
            continue
        sub = rewritten(cls)
        if sub is not None:
            m.__class__ = sub
            swapped.append((m, cls))
    return swapped


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.allclose(a, b, atol=1e-5, rtol=1e-4))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=False))
    return type(a) is type(b)


@torch.no_grad()
def verify_swaps(model: nn.Module, swapped: list[tuple[nn.Module, type]], run) -> list[tuple[nn.Module, type]]:
    """Keep only the swaps whose module gives the original's outputs on the inputs ``run()`` feeds it.

    ``run`` runs the model once. Every swapped module is called there with its original class
    (inputs and outputs recorded), then again with the rewritten one; a class with any mismatch,
    error or uncalled module is swapped back everywhere. Returns the swaps kept.
    """
    if not swapped:
        return []
    calls: dict[int, list] = {}
    hooks = []
    for m, old in swapped:
        m.__class__ = old
        hooks.append(m.register_forward_hook(
            lambda mod, args, kwargs, out: calls.setdefault(id(mod), []).append((args, kwargs, out)),
            with_kwargs=True))
    was_training = model.training
    model.eval()
    bad: set[type] = set()
    try:
        try:
            run()
        finally:
            for h in hooks:
                h.remove()
        for m, old in swapped:
            recorded = calls.get(id(m))
            if not recorded:
                bad.add(old)
                continue
            m.__class__ = rewritten(old)
            try:
                ok = all(_same(m(*args, **kwargs), out) for args, kwargs, out in recorded[:2])
            except Exception:  # noqa: BLE001 - any failure means: keep the original forward
                ok = False
            if not ok:
                bad.add(old)
    finally:
        model.train(was_training)
    kept = []
    for m, old in swapped:
        if old in bad:
            m.__class__ = old
        else:
            kept.append((m, old))
    return kept
