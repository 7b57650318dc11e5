"""A module tree as plain data (JSON), rebuilt without running any code from the file.

:func:`encode` walks a model: for each module its class (``"package.module:QualName"``), its plain
attributes (numbers, strings, tuples, dicts, dtypes, enums, classes and functions named by import
path, Hugging Face configs, small objects of allowed classes), its children, the names of its
parameters and buffers, and prunekit's mask hooks. Tensors are stored by the caller
(:mod:`prunekit.serialize`); a tensor attribute that is neither parameter nor buffer goes in
``extra``.

:func:`decode` rebuilds it. Classes and functions are looked up by name, only under the allowed
package roots (:data:`ALLOWED`, plus the classes a caller passes), and instantiated with
``cls.__new__`` and ``nn.Module.__init__``: no constructor, ``__setstate__`` or pickle opcode from
the file runs, so a file cannot execute code. A model of your own classes saves as well; loading
it needs them passed (``prunekit.load(path, classes=[MyNet])``). What cannot be written as data (a lambda hook, an
object of an unknown class) is refused when saving, with the module and attribute named.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.GELU(approximate="tanh"))
>>> tree, extra = encode(net)
>>> tree["cls"], tree["children"]["1"]["dict"]["approximate"]
('torch.nn.modules.container:Sequential', 'tanh')
>>> back = decode(tree, {})
>>> type(back[0]).__name__, back[0].kernel_size, back[1].approximate
('Conv2d', (3, 3), 'tanh')
"""
from __future__ import annotations

import enum
import functools
import importlib
import sys
import types
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from prunekit.errors import PruningError

__all__ = ["ALLOWED", "encode", "decode", "class_path", "resolve", "trusted"]

# Package roots whose classes and functions a file may name.
ALLOWED = ("torch", "torchvision", "timm", "transformers", "prunekit", "collections", "math", "operator")
_INTERNAL = {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_backward_pre_hooks",
             "_backward_hooks", "_is_full_backward_hook", "_forward_hooks", "_forward_hooks_with_kwargs",
             "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
             "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
             "_load_state_dict_post_hooks", "prunekit_meta"}
_FORWARD_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks")


def class_path(obj: Any) -> str:
    """``"package.module:QualName"`` of a class or function."""
    return f"{obj.__module__}:{obj.__qualname__}"


def resolve(path: str, extra: dict[str, Any] | None = None, anywhere: bool = False) -> Any:
    """The class or function ``path`` names, if it lies under an allowed root (or in ``extra``;
    ``anywhere``: any importable path, which saving checks)."""
    if extra and path in extra:
        return extra[path]
    module, _, qual = path.partition(":")
    trusted = (extra or {}).get(f"module:{module}")
    if not qual or not anywhere and trusted is None and module.split(".")[0] not in ALLOWED:
        raise PruningError(path, "load a model", f"the file names a class outside {ALLOWED}; pass it (or any "
                           "class of its module) to prunekit.load(path, classes=[YourClass]) if you trust it")
    obj: Any = trusted if trusted is not None else importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def enum_member(path: str, value: Any, extra: dict[str, Any] | None = None) -> enum.Enum:
    """The member ``value`` of the enum class ``path`` names.

    Enums are data, so besides the allowed roots an enum may come from any module that is already
    imported (a dependency of an allowed package put it there, e.g. ``kernels``' ``Mode`` on
    transformers models); nothing is imported on the file's say-so, and the class must be an
    ``enum.Enum``, so the lookup can only select a member, never call arbitrary code.

    >>> enum_member("prunekit.errors:PruningError", 1)
    Traceback (most recent call last):
    ...
    ValueError: prunekit.errors:PruningError is not an enum class
    """
    module, _, qual = path.partition(":")
    if module in sys.modules and module.split(".")[0] not in ALLOWED and not (extra or {}).get(f"module:{module}"):
        cls: Any = sys.modules[module]
        for part in qual.split("."):
            cls = getattr(cls, part)
    else:
        cls = resolve(path, extra)
    if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
        raise ValueError(f"{path} is not an enum class")
    return cls(value)


class _Encoder:
    def __init__(self, model: nn.Module):
        self.paths = {id(m): name for name, m in model.named_modules(remove_duplicate=True)}
        self.extra: dict[str, torch.Tensor] = {}

    def fail(self, where: str, what: str) -> PruningError:
        return PruningError(where or "<model>", "save a model", f"{what} cannot be stored as data (no pickle); "
                            "remove it before saving, or save the state_dict")

    def named(self, obj: Any, where: str) -> str:
        path = class_path(obj)
        if isinstance(obj, type) and "<locals>" not in path:
            return path  # a class is looked up again at load time (yours: passed as classes=[...])
        try:
            if resolve(path, anywhere=True) is not obj:
                raise LookupError
        except Exception:
            raise self.fail(where, f"{obj!r} (not importable as {path})") from None
        return path

    def value(self, v: Any, where: str) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)) and type(v) in (bool, int, float, str):
            return v
        if isinstance(v, torch.Size):
            return {"__size__": list(v)}
        if isinstance(v, enum.Enum):
            return {"__enum__": self.named(type(v), where), "value": self.value(v.value, where)}
        if type(v) is tuple:
            return {"__tuple__": [self.value(x, where) for x in v]}
        if isinstance(v, tuple) and hasattr(v, "_fields"):
            return {"__namedtuple__": self.named(type(v), where), "items": [self.value(x, where) for x in v]}
        if type(v) is list:
            return [self.value(x, where) for x in v]
        if type(v) in (set, frozenset):
            return {"__set__": [self.value(x, where) for x in v], "frozen": type(v) is frozenset}
        if type(v) in (dict, OrderedDict):
            items = [[self.value(k, where), self.value(x, f"{where}[{k!r}]")] for k, x in v.items()]
            return {"__dict__": items, "ordered": type(v) is OrderedDict}
        if isinstance(v, torch.dtype):
            return {"__dtype__": str(v).removeprefix("torch.")}
        if isinstance(v, torch.device):
            return {"__device__": str(v)}
        if isinstance(v, nn.Module):
            if id(v) not in self.paths:
                raise self.fail(where, f"a reference to a module outside the model ({type(v).__name__})")
            return {"__ref__": self.paths[id(v)]}
        if isinstance(v, torch.Tensor):
            key = f"__extra__{len(self.extra)}"
            self.extra[key] = v
            return {"__tensor__": key}
        if isinstance(v, type):
            return {"__type__": self.named(v, where)}
        if isinstance(v, functools.partial):
            return {"__partial__": self.value(v.func, where), "args": self.value(tuple(v.args), where),
                    "keywords": self.value(dict(v.keywords), where)}
        if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, types.MethodWrapperType)) \
                or callable(v) and hasattr(v, "__qualname__") and not hasattr(v, "__dict__"):
            if "<lambda>" in getattr(v, "__qualname__", "") or "<locals>" in getattr(v, "__qualname__", ""):
                raise self.fail(where, f"a local function or lambda ({v!r})")
            return {"__fn__": self.named(v, where)}
        return self.object(v, where)

    def object(self, v: Any, where: str) -> dict:
        cls = type(v)
        path = self.named(cls, where)
        if hasattr(v, "__dict__"):
            state = dict(vars(v))
        else:
            slots = [s for c in cls.__mro__ for s in getattr(c, "__slots__", ())]
            state = {s: getattr(v, s) for s in slots if hasattr(v, s)}
        return {"__object__": path, "state": {k: self.value(x, f"{where}.{k}") for k, x in state.items()}}

    def module(self, m: nn.Module, where: str) -> dict:
        from prunekit.sparse.masking import MaskHook
        hooks = []
        for kind in _FORWARD_HOOKS:
            for hook in getattr(m, kind).values():
                if kind == "_forward_pre_hooks" and isinstance(hook, MaskHook):
                    hooks.append("mask")
                else:
                    raise self.fail(where, f"a {kind[1:-1].replace('_', ' ')} ({hook!r})")
        attrs = {k: self.value(v, f"{where}.{k}" if where else k) for k, v in vars(m).items() if k not in _INTERNAL}
        children = {k: (None if c is None else self.module(c, f"{where}.{k}" if where else k))
                    for k, c in m._modules.items()}
        return {"cls": self.named(type(m), where), "dict": attrs, "children": children,
                "params": {k: p is not None for k, p in m._parameters.items()},
                "buffers": {k: b is not None for k, b in m._buffers.items()},
                "non_persistent": sorted(m._non_persistent_buffers_set), "hooks": hooks}


def encode(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(tree, extra_tensors)`` for ``model``; raises ``PruningError`` on anything not storable as data."""
    enc = _Encoder(model)
    return enc.module(model, ""), enc.extra


class _Decoder:
    def __init__(self, extra_tensors: dict[str, torch.Tensor], classes: dict[str, Any]):
        self.tensors, self.classes = extra_tensors, classes
        self.refs: list[tuple[Any, str, Any, str]] = []  # (holder, key, kind, module path) filled in at the end
        self.modules: dict[str, nn.Module] = {}

    def value(self, v: Any) -> Any:
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "__tuple__" in v:
            return tuple(self.value(x) for x in v["__tuple__"])
        if "__namedtuple__" in v:
            cls = resolve(v["__namedtuple__"], self.classes)
            if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
                raise ValueError(f"{v['__namedtuple__']} is not a namedtuple class")
            return cls(*[self.value(x) for x in v["items"]])
        if "__size__" in v:
            return torch.Size(v["__size__"])
        if "__set__" in v:
            items = [self.value(x) for x in v["__set__"]]
            return frozenset(items) if v.get("frozen") else set(items)
        if "__dict__" in v:
            out = OrderedDict() if v.get("ordered") else {}
            for k, x in v["__dict__"]:
                out[self.value(k)] = self.value(x)
            return out
        if "__dtype__" in v:
            dtype = getattr(torch, v["__dtype__"])
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"not a dtype: {v['__dtype__']}")
            return dtype
        if "__device__" in v:
            return torch.device(v["__device__"])
        if "__enum__" in v:
            return enum_member(v["__enum__"], self.value(v["value"]), self.classes)
        if "__type__" in v:
            obj = resolve(v["__type__"], self.classes)
            if not isinstance(obj, type):
                raise ValueError(f"{v['__type__']} is not a class")
            return obj
        if "__fn__" in v:
            obj = resolve(v["__fn__"], self.classes)
            if not callable(obj):
                raise ValueError(f"{v['__fn__']} is not callable")
            return obj
        if "__partial__" in v:
            return functools.partial(self.value(v["__partial__"]), *self.value(v["args"]), **self.value(v["keywords"]))
        if "__tensor__" in v:
            return self.tensors[v["__tensor__"]]
        if "__ref__" in v:
            return _Ref(v["__ref__"])
        if "__object__" in v:
            cls = resolve(v["__object__"], self.classes)
            if not isinstance(cls, type) or isinstance(cls, type(nn.Module)) and issubclass(cls, nn.Module):
                raise ValueError(f"{v['__object__']} cannot be rebuilt as a plain object")
            obj = cls.__new__(cls)
            for k, x in v["state"].items():
                object.__setattr__(obj, k, self.value(x))
            return obj
        raise ValueError(f"unknown tag in {sorted(v)[:3]}")

    def module(self, node: dict, path: str) -> nn.Module:
        from prunekit.sparse.masking import MaskHook
        cls = resolve(node["cls"], self.classes)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"{node['cls']} is not an nn.Module class")
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        for k, v in node["dict"].items():
            m.__dict__[k] = self.value(v)
        for k, child in node["children"].items():
            m._modules[k] = None if child is None else self.module(child, f"{path}.{k}" if path else k)
        for k in node["params"]:
            m._parameters[k] = None
        for k in node["buffers"]:
            m._buffers[k] = None
        m._non_persistent_buffers_set.update(node["non_persistent"])
        for hook in node["hooks"]:
            if hook == "mask":
                m.register_forward_pre_hook(MaskHook())
        self.modules[path] = m
        return m


class _Ref:
    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path


def _link(obj: Any, modules: dict[str, nn.Module], seen: set[int]) -> Any:
    """Replace every :class:`_Ref` inside ``obj`` by the module it names (in place where mutable)."""
    if isinstance(obj, _Ref):
        return modules[obj.path]
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, torch.Tensor, type)) or obj is None:
        return obj
    seen.add(id(obj))
    if isinstance(obj, list):
        obj[:] = [_link(x, modules, seen) for x in obj]
    elif isinstance(obj, dict):
        for k in list(obj):
            obj[k] = _link(obj[k], modules, seen)
    elif isinstance(obj, tuple):
        return type(obj)(_link(x, modules, seen) for x in obj) if not isinstance(obj, torch.Size) else obj
    elif isinstance(obj, nn.Module):
        for k, v in list(obj.__dict__.items()):
            if k not in _INTERNAL:
                obj.__dict__[k] = _link(v, modules, seen)
    elif hasattr(obj, "__dict__") or hasattr(type(obj), "__slots__"):
        names = list(vars(obj)) if hasattr(obj, "__dict__") else \
            [s for c in type(obj).__mro__ for s in getattr(c, "__slots__", ()) if hasattr(obj, s)]
        for k in names:
            object.__setattr__(obj, k, _link(getattr(obj, k), modules, seen))
    return obj


def trusted(classes: Any) -> dict[str, Any]:
    """What ``decode(classes=...)`` takes from a list of user classes: each class, and its whole module."""
    import sys
    out: dict[str, Any] = {}
    for cls in classes:
        out[class_path(cls)] = cls
        mod = sys.modules.get(cls.__module__)
        if mod is not None:
            out[f"module:{cls.__module__}"] = mod
    return out


def decode(tree: dict, extra_tensors: dict[str, torch.Tensor], classes: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild the module tree :func:`encode` wrote (parameters and buffers left ``None`` for the caller);
    ``classes``: :func:`trusted` of the caller's classes."""
    dec = _Decoder(extra_tensors, classes or {})
    model = dec.module(tree, "")
    for m in dec.modules.values():
        _link(m, dec.modules, set())
    return model
