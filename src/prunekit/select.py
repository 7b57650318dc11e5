"""``ignore=``: one matcher for every prunekit operation (prune, sparsify, their CLI ``--ignore``).

An entry is a module instance, a module class, or a string: a module path (``"blocks.0"``, which
covers everything inside it), a parameter name (``"head.weight"``), or an fnmatch pattern over module
paths (``"blocks.*.attn"``). A string that matches nothing is refused with the closest names, so a
typo never silently prunes what it meant to protect.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> sorted(ignored_modules(net, ["0", torch.nn.ReLU]))
['0', '1']
>>> ignored_modules(net, ["2.wieght"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
prunekit.errors.PruningError: ignore='2.wieght': cannot match a module: ...; close names: ['2.weight', ...]
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from typing import Any

from torch import nn

from prunekit.errors import PruningError

__all__ = ["as_list", "ignored_modules", "ignored_params", "matches"]


def as_list(ignore: Any) -> list:
    """``ignore`` as a list: one string, module or class counts as one entry."""
    if ignore is None:
        return []
    return list(ignore) if not isinstance(ignore, (str, nn.Module, type)) else [ignore]


def matches(path: str, module: nn.Module, entry: Any) -> bool:
    """Whether ``entry`` names the module at ``path`` (or a module it sits inside)."""
    if isinstance(entry, nn.Module):
        return module is entry
    if isinstance(entry, type):
        return isinstance(module, entry)
    if isinstance(entry, str):
        return path == entry or path.startswith(entry + ".") or fnmatch.fnmatchcase(path, entry)
    raise PruningError(repr(entry), "match a module", "ignore entries are module paths, fnmatch patterns, "
                       "parameter names, modules or module classes")


def _check(model: nn.Module, entries: list) -> None:
    paths = [p for p, _ in model.named_modules() if p]
    params = [n for n, _ in model.named_parameters()]
    for e in entries:
        if not isinstance(e, str):
            continue
        if any(matches(p, m, e) for p, m in model.named_modules() if p) or any(
                n == e or fnmatch.fnmatchcase(n, e) for n in params):
            continue
        close = difflib.get_close_matches(e, paths + params, n=3, cutoff=0.3)
        raise PruningError(f"ignore={e!r}", "match a module", "no module or parameter of that name or pattern"
                           + (f"; close names: {close}" if close else ""))


def ignored_modules(model: nn.Module, ignore: Any) -> dict[str, nn.Module]:
    """The modules ``ignore`` names (each with everything inside it), by path; unknown strings raise."""
    entries = as_list(ignore)
    _check(model, entries)
    mods = dict(model.named_modules())
    hit = [p for p, m in mods.items() if any(matches(p, m, e) for e in entries)]
    inside = [p for p in mods if any(p == h or not h or p.startswith(h + ".") for h in hit)]
    return {p: mods[p] for p in inside}


def ignored_params(model: nn.Module, ignore: Any) -> list[str]:
    """Parameter and buffer names that ``ignore`` covers: those of every named module, plus
    parameters named directly (exactly or by pattern)."""
    entries = as_list(ignore)
    names = []
    for path, m in ignored_modules(model, entries).items():
        prefix = f"{path}." if path else ""
        names += [prefix + n for n, _ in m.named_parameters(recurse=False)]
        names += [prefix + n for n, _ in m.named_buffers(recurse=False)]  # e.g. a fixed blur filter
    strings: Iterable[str] = [e for e in entries if isinstance(e, str)]
    names += [n for n, _ in model.named_parameters() if any(n == e or fnmatch.fnmatchcase(n, e) for e in strings)]
    return list(dict.fromkeys(names))
