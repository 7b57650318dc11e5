"""``prunekit run RECIPE.yaml [--dry-run] [--resume] [--out DIR]``: run a recipe (see :mod:`prunekit.recipe`).

The recipe is checked before any model is built (one line naming the bad key). ``--dry-run`` prints
the plan, the ``prunekit`` command of every step, and stops. A run writes into ``--out`` (default
``runs/<recipe name>-<timestamp>``): each step's model and JSON, ``run.json`` and the report
(``report.md``, ``report.html``, plots). ``--resume`` continues a run in that directory, skipping the
steps whose outputs are there.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("run", help="run a recipe: a YAML chain of steps (prune, fine-tune, merge, export...)")
    p.add_argument("recipe", help="the recipe .yaml (examples/recipes/ has one per method family)")
    p.add_argument("--dry-run", action="store_true", help="check the recipe and print its plan only")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--out", default=None, help="run directory (default runs/<recipe>-<timestamp>)")
    p.add_argument("--json", action="store_true", help="print one JSON object: the last model against the input "
                   "model (the keys every verb prints), the steps and the report")
    p.set_defaults(func=run)


def run(args) -> int:
    from prunekit.errors import PruningError
    from prunekit.recipe import load_recipe, run_recipe
    recipe = load_recipe(args.recipe)
    if args.resume and not args.out:
        raise PruningError("--resume", "run the recipe", "give --out DIR, the run directory to continue")
    out = Path(args.out or f"runs/{Path(args.recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.dry_run:
        commands = [" ".join(argv) for argv in recipe.commands(out)]
        if args.json:
            print(json.dumps({"recipe": args.recipe, "out": str(out), "dry_run": True, "commands": commands}))
            return 0
        print(f"recipe {args.recipe}: {len(recipe.steps)} steps, into {out}/")
        for i, cmd in enumerate(commands):
            print(f"{i + 1:>3}. {cmd}")
        return 0
    summary = run_recipe(recipe, out, resume=args.resume, progress=not args.json)
    if args.json:
        print(json.dumps({**summary["result"], "steps": summary["steps"], "report": summary["report"],
                          "out": str(out)}, sort_keys=True))
        return 0
    print(f"run written to {out}/ (report: {summary['report']})")
    return 0
