"""The ``prunekit`` command. Each subcommand lives in its own module with a ``register(subparsers)``.

>>> main(["--help"])   # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

__all__ = ["main", "COMMANDS"]

# One module per subcommand (prunekit.cli.<name>); each defines register(subparsers).
COMMANDS = ("profile", "zoo", "demo", "sparsify", "merge", "tokens", "prune", "drop_layers", "finetune", "export",
            "run", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files (else $PRUNEKIT_DATA)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"prunekit.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Bad input (a ``PruningError``, a missing data set, a ``ValueError``) prints one
    line ``prunekit VERB: ...`` on stderr and returns 2; ``--debug`` shows the traceback instead."""
    args = build_parser().parse_args(argv)
    from prunekit.errors import DataNotFoundError, PruningError
    try:
        with _data_dir(args.data_dir), _threads(args.threads):
            return int(args.func(args) or 0)
    except (PruningError, DataNotFoundError, ValueError, NotImplementedError) as e:
        if args.debug:
            raise
        print(f"prunekit {args.command}: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        if isinstance(e.code, str) and not args.debug:
            print(e.code if e.code.startswith("prunekit") else f"prunekit {args.command}: {e.code}", file=sys.stderr)
            return 2
        raise


@contextlib.contextmanager
def _data_dir(path: str | None):
    """``--data-dir`` for this command only (the environment is restored afterwards)."""
    if not path:
        yield
        return
    from prunekit.errors import DataNotFoundError
    if not os.path.isdir(path):
        raise DataNotFoundError(f"--data-dir {path} is not a directory; give the folder with the Fashion-MNIST "
                                "IDX files")
    old = os.environ.get("PRUNEKIT_DATA")
    os.environ["PRUNEKIT_DATA"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PRUNEKIT_DATA", None)
        else:
            os.environ["PRUNEKIT_DATA"] = old


@contextlib.contextmanager
def _threads(n: int | None):
    """``--threads`` for this command only."""
    if not n:
        yield
        return
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


if __name__ == "__main__":
    sys.exit(main())
