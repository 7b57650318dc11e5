"""``prunekit demo``: the main job (see prunekit.demo)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run every method on the reference models and write a report")
    p.add_argument("--models", nargs="*", default=None, help="subset of zoo models")
    p.add_argument("--limit", type=int, default=None, help="eval samples per model (default: per-model)")
    p.add_argument("--out", default="runs", help="report root directory")
    p.add_argument("--json", action="store_true", help="print one JSON object: the report's path and every row "
                   "in the keys every verb prints")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from prunekit.demo import DEMO_MODELS, run_demo
    from prunekit.report import markdown_table
    rows, report = run_demo(tuple(args.models or DEMO_MODELS), limit=args.limit, out_root=Path(args.out))
    if args.json:
        import json

        from prunekit.cli.compare import rows_json
        print(json.dumps(rows_json(rows, {"report": str(report)}), sort_keys=True))
        return 0
    print(markdown_table(rows))
    print(f"\nreport: {report}\nplot:   {report.parent / 'tradeoff.png'}")
    return 0
