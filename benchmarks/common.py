"""Shared by the benchmark scripts: the machine description and the JSON result format.

Every script writes ``benchmarks/results/<name>.json`` with ``title``, ``command``, ``setup``,
``table`` (``columns`` + ``rows``), ``notes`` and any raw data; ``make_readme_table.py`` renders the
tables into README.md. Never type a number into the README by hand.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}


def write_result(name: str, title: str, columns: list[str], rows: list[list], notes: str = "",
                 setup: dict | None = None, raw: dict | None = None, figure: str | None = None) -> Path:
    """Write one benchmark's JSON; ``rows`` hold plain numbers/strings in ``columns`` order. ``figure``: a
    file the script wrote beside the JSON (a PNG), shown under the table in the README."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"title": title, "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
           "setup": {**machine(), **(setup or {})}, "table": {"columns": columns, "rows": rows},
           "notes": notes, "raw": raw or {}, **({"figure": figure} if figure else {})}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")
    return path
