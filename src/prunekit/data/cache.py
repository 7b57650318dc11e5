"""On-disk cache for generated data sets (``PRUNEKIT_CACHE``, default ``~/.cache/prunekit``)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["cache_dir", "cached"]

_VERSION = "v1"


def cache_dir() -> Path:
    return Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit"))


def cached(key: str, build: Callable[[], tuple]) -> tuple:
    """Return ``build()``, stored under ``key``; a corrupt or unwritable cache falls back to building."""
    path = cache_dir() / f"{key}-{_VERSION}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a broken cache file is rebuilt
            pass
    value = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(value, tmp)
        tmp.replace(path)
    except OSError:
        pass
    return value
