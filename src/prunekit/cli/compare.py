"""``prunekit compare RUN_A RUN_B ... [--out DIR]``: the side-by-side table of runs and their combined plot.

A run is a directory written by ``prunekit run`` or ``prunekit demo`` (it holds ``results.json``).
Rows keep their own run's measurements; each method is prefixed with its run's name, and the plot
puts every run's points for a model in that model's panels.
"""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare runs (prunekit run / demo directories): one table, one plot")
    p.add_argument("runs", nargs="+", help="run directories, each holding results.json")
    p.add_argument("--out", default="compare", help="directory for compare.md and compare.png")
    p.add_argument("--json", action="store_true", help="print one JSON object: every row in the keys every verb "
                   "prints, each against its model's dense row")
    p.set_defaults(func=run)


def combined_rows(runs: list[str]) -> list[dict]:
    """Every run's rows, methods prefixed with the run's name; one dense row per model (the first run's)."""
    from prunekit.errors import PruningError
    rows, dense_seen = [], set()
    for run_dir in runs:
        path = Path(run_dir) / "results.json"
        if not path.is_file():
            raise PruningError(run_dir, "compare runs", "no results.json there; give a directory written by "
                               "prunekit run or prunekit demo")
        name = Path(run_dir).resolve().name
        for r in json.loads(path.read_text()):
            if r.get("method") == "dense":
                if r["model"] in dense_seen:
                    continue
                dense_seen.add(r["model"])
                rows.append(r)
            else:
                rows.append({**r, "method": f"{name}: {r['method']}"})
    return rows


def run(args) -> int:
    from prunekit.report import markdown_table, plot_tradeoff
    rows = combined_rows(args.runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_tradeoff(rows, out / "compare.png")
    table = markdown_table(rows)
    (out / "compare.md").write_text(f"# prunekit compare\n\nRuns: {', '.join(args.runs)}\n\n{table}\n\n"
                                    f"![compare]({plot.name})\n")
    if args.json:
        print(json.dumps(rows_json(rows, {"runs": args.runs, "table": str(out / "compare.md"), "plot": str(plot)}),
                         sort_keys=True))
        return 0
    print(table)
    print(f"\nwritten: {out / 'compare.md'}, {plot}")
    return 0


def rows_json(rows: list[dict], extra: dict) -> dict:
    """``{"rows": [...], **extra}``: each row in the ``--json`` shape, with its model's dense row as ``dense``."""
    from prunekit.cli.common import row_json
    dense = {r["model"]: r for r in rows if r.get("method") == "dense"}
    return {**extra, "rows": [row_json(r, dense.get(r["model"])) for r in rows]}
