"""``prunekit profile NAME [--json]``: params, MACs, latency, memory and task metric of a model."""
from __future__ import annotations

from prunekit.cli.common import add_measure_args, print_result, resolve_model
from prunekit.measure import profile


def register(sub) -> None:
    p = sub.add_parser("profile", help="measure a zoo model, timm:<name> or saved model")
    p.add_argument("model")
    add_measure_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    wl = resolve_model(args.model)
    result = profile(wl.model, wl.example_inputs, lambda m: wl.evaluate(m, limit=args.limit),
                     repeats=args.repeats)
    result["model"] = wl.name
    print_result(result, args.json)
    return 0
