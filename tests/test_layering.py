"""GUIDE.md's layering: an import never climbs the ladder (algorithms -> train -> data/zoo -> cli)."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "prunekit"
LADDER = {"sparse": 2, "structured": 2, "tokens": 2, "train": 3, "data": 4, "zoo": 4, "cli": 5, "demo": 5}


def imported(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prunekit."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("prunekit.")}
    return out


@pytest.mark.parametrize("package", ["sparse", "structured", "tokens", "train"])
def test_no_import_climbs_the_ladder(package):
    level = LADDER[package]
    bad = {f"{p.relative_to(SRC)} imports prunekit.{m}" for p in (SRC / package).rglob("*.py")
           for m in imported(p) if LADDER.get(m, 0) > level}
    assert not bad, sorted(bad)
