"""Extract a corpus of real English sentences from the docstrings of the Python standard library.

Usage: python scripts/extract_corpus.py [--out src/prunekit/data/corpus.txt] [--max 4000]
The output is deterministic for a given Python version: modules are visited in sorted order.
"""
from __future__ import annotations

import argparse
import ast
import re
import sysconfig
from pathlib import Path

SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences_from(path: Path):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if not doc:
                continue
            para = doc.split("\n\n")[0]
            text = " ".join(para.split())
            for s in SENTENCE.split(text):
                words = s.split()
                if (6 <= len(words) <= 40 and s[0].isupper() and s.endswith(".")
                        and not re.search(r"[>{}\[\]=_`|\\]|::|\(\)", s)
                        and sum(w.isalpha() for w in words) >= 0.7 * len(words)):
                    yield s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="src/prunekit/data/corpus.txt")
    ap.add_argument("--max", type=int, default=4000)
    args = ap.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen, out = set(), []
    for path in sorted(stdlib.rglob("*.py")):
        if any(p in path.parts for p in ("test", "tests", "site-packages", "idlelib", "lib2to3")):
            continue
        for s in sentences_from(path):
            if s not in seen:
                seen.add(s)
                out.append(s)
    out = out[: args.max]
    Path(args.out).write_text("\n".join(out) + "\n", encoding="utf-8")
    print(f"wrote {len(out)} sentences to {args.out}")


if __name__ == "__main__":
    main()
