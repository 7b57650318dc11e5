"""The ``prunekit`` command. Each subcommand lives in its own module with a ``register(subparsers)``.

>>> main(["--help"])   # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "COMMANDS"]

# One module per subcommand (prunekit.cli.<name>); each defines register(subparsers).
COMMANDS = ("profile", "zoo", "demo", "sparsify", "merge", "tokens", "prune", "finetune")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files (else $PRUNEKIT_DATA)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"prunekit.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data_dir:
        import os
        os.environ["PRUNEKIT_DATA"] = args.data_dir
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from prunekit.errors import PruningError
    try:
        return int(args.func(args) or 0)
    except PruningError as e:  # bad input: one line naming the problem and the fix, no traceback
        print(f"prunekit {args.command}: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code if e.code.startswith("prunekit") else f"prunekit {args.command}: {e.code}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
