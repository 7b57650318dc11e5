"""Re-run every benchmark exactly as its result was made, then regenerate the README table.

Each ``benchmarks/results/*.json`` records the ``command`` that wrote it; this runs those commands
one after another (in file-name order, stopping at the first failure), so "re-measure everything
after a retrain" is one command with the recorded settings, not the scripts' defaults.

    python benchmarks/rerun.py [--only zoo tome_minilm] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def recorded_commands(results: Path = BENCH / "results", only: list[str] | None = None) -> dict[str, list[str]]:
    """``{result name: argv}`` for each result file, to run from the repo root (the script path resolved
    from the root or from benchmarks/, where a few were once run)."""
    out = {}
    for path in sorted(results.glob("*.json")):
        if only and path.stem not in only:
            continue
        doc = json.loads(path.read_text())
        if "command" not in doc:
            continue
        argv = shlex.split(doc["command"])
        if argv[0] != "python" or len(argv) < 2:
            raise ValueError(f"{path.name}: recorded command {doc['command']!r} is not 'python SCRIPT ...'")
        script = next((p for p in (ROOT / argv[1], BENCH / argv[1]) if p.is_file()), None)
        if script is None:
            raise FileNotFoundError(f"{path.name}: script {argv[1]!r} of its recorded command does not exist")
        out[path.stem] = [sys.executable, script.relative_to(ROOT).as_posix(), *argv[2:]]  # run from ROOT
    if only and (missing := sorted(set(only) - set(out))):
        raise SystemExit(f"no recorded result named {missing}; choose from {[p.stem for p in results.glob('*.json')]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="+", help="result names (file stems) to re-run")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args()
    for name, argv in recorded_commands(only=args.only).items():
        print(f"== {name}: {shlex.join(argv[1:])}", flush=True)
        if not args.dry_run:
            subprocess.run(argv, cwd=ROOT, check=True)
    if not args.dry_run:
        subprocess.run([sys.executable, str(BENCH / "make_readme_table.py")], check=True)


if __name__ == "__main__":
    main()
