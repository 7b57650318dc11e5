"""Reference models trained by prunekit's own recipes, with checkpoints shipped in the package.

Each model is one :class:`ZooEntry` (``entry(name)``; all of them in ``ENTRIES``).
"""
from prunekit.zoo.entries import ENTRIES, ZooEntry, entry
from prunekit.zoo.models import build
from prunekit.zoo.registry import NAMES, TASKS, Workload, evaluate_model, load
from prunekit.zoo.store import read_manifest

__all__ = ["ENTRIES", "NAMES", "TASKS", "Workload", "ZooEntry", "build", "entry", "evaluate_model", "load",
           "read_manifest", "train"]


def train(name: str, **kwargs) -> dict:
    """Train zoo model ``name`` with its recipe; see ``prunekit.zoo.train.train_model``."""
    from prunekit.zoo.train import train_model
    return train_model(name, **kwargs)
