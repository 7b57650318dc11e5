"""Old keyword names kept working for one release, with a DeprecationWarning that names the new one.

>>> import warnings
>>> with warnings.catch_warnings(record=True) as w:
...     warnings.simplefilter("always")
...     renamed("prune", "importance", "criterion", "l1", "l2", "l2")
...     str(w[0].message)
'l1'
'prune: importance= is deprecated, use criterion= (the same values)'
"""
from __future__ import annotations

import warnings
from typing import Any

from prunekit.errors import PruningError

__all__ = ["renamed"]


def renamed(where: str, old: str, new: str, old_value: Any, new_value: Any, default: Any) -> Any:
    """The value to use when ``old=`` may still be given instead of ``new=``: ``new_value`` unless
    ``old_value`` is set (not ``None``), which warns; giving both (``new`` not at its default) is refused."""
    if old_value is None:
        return new_value
    if new_value is not default and new_value != old_value:
        raise PruningError(where, f"take both {old}= and {new}=", f"{old}= is the old name of {new}=; give {new}= only")
    warnings.warn(f"{where}: {old}= is deprecated, use {new}= (the same values)", DeprecationWarning, stacklevel=3)
    return old_value
