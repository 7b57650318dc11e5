"""A corpus of real English sentences (docstrings of the Python standard library), shipped as text.

Made by ``python scripts/extract_corpus.py``; one sentence per line.

>>> sentences = load_corpus()
>>> len(sentences) > 1000 and all(s.strip() for s in sentences)
True
"""
from __future__ import annotations

from importlib import resources

__all__ = ["load_corpus"]


def load_corpus(limit: int | None = None) -> list[str]:
    """The shipped sentences, in file order; ``limit`` keeps the first ``limit``."""
    text = resources.files("prunekit.data").joinpath("corpus.txt").read_text(encoding="utf-8")
    lines = [s for s in text.splitlines() if s.strip()]
    return lines[:limit] if limit else lines
