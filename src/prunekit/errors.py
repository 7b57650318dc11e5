"""Errors raised by prunekit.

Every error names the module (or object) and the operation that failed, and says how to fix it.
"""
from __future__ import annotations

__all__ = ["PruningError", "DataNotFoundError"]


class PruningError(RuntimeError):
    """A compression operation could not be carried out; the model was left unchanged.

    >>> str(PruningError("blocks.0.attn", "prune heads", "num_heads must be even"))
    "blocks.0.attn: cannot prune heads: num_heads must be even"
    """

    def __init__(self, module: str, operation: str, reason: str):
        self.module, self.operation, self.reason = module, operation, reason
        super().__init__(f"{module}: cannot {operation}: {reason}")


class DataNotFoundError(FileNotFoundError):
    """A data set that prunekit needs is not on disk."""
