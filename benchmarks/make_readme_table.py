"""Render every ``benchmarks/results/*.json`` into README.md between the results markers."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render(results_dir: Path = ROOT / "benchmarks" / "results") -> str:
    parts = []
    for path in sorted(results_dir.glob("*.json")):
        doc = json.loads(path.read_text())
        if "table" not in doc:  # e.g. a benchmark's in-progress checkpoint file
            continue
        setup = doc.get("setup", {})
        cols, rows = doc["table"]["columns"], doc["table"]["rows"]
        parts.append(f"#### {doc['title']}\n")
        parts.append(f"`{doc['command']}` — torch {setup.get('torch')}, {setup.get('threads')} threads"
                     + (f", batch {setup['batch_size']}" if "batch_size" in setup else "")
                     + f" ([{path.name}](benchmarks/results/{path.name}))\n")
        parts.append("| " + " | ".join(cols) + " |")
        parts.append("|" + "---|" * len(cols))
        parts += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        if doc.get("notes"):
            parts.append(f"\n{doc['notes']}")
        if doc.get("figure"):
            parts.append(f"\n![{doc['title']}](benchmarks/results/{doc['figure']})")
        parts.append("")
    return "\n".join(parts) if parts else "_No benchmark results yet._\n"


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + START + "\n" + render() + "\n" + END + tail)
    print("README.md results table regenerated")


if __name__ == "__main__":
    main()
