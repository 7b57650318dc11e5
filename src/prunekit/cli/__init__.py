"""The ``prunekit`` command. Each subcommand lives in its own module with a ``register(subparsers)``.

>>> main(["--help"])   # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "COMMANDS"]

# One module per subcommand (prunekit.cli.<name>); each defines register(subparsers).
COMMANDS = ("profile", "zoo", "demo", "sparsify", "merge", "tokens", "prune")


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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
