"""``prunekit profile NAME [--json]``: params, MACs, latency, throughput, memory and task metric of a
model, in the shape every verb prints (``method`` is ``dense`` and ``dense`` repeats the model's own)."""
from __future__ import annotations

from prunekit.cli.common import add_measure_args, compare, print_result, resolve_model
from prunekit.measure import paired_timings, profile


def register(sub) -> None:
    p = sub.add_parser("profile", help="measure a zoo model, timm:<name> or saved model")
    p.add_argument("model")
    add_measure_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    wl = resolve_model(args.model)
    p = profile(wl.model, wl.example_inputs, lambda m: wl.evaluate(m, limit=args.limit), repeats=1, warmup=0)
    timing = paired_timings(wl.model, wl.model, wl.example_inputs, repeats=args.repeats,
                            throughput_batch=args.throughput_batch)
    result = {"model": wl.name, **compare({**p, "model": wl.name}, p, "dense", timing)}
    del result["ratios"]
    print_result(result, args.json)
    return 0
