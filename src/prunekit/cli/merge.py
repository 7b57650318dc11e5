"""``prunekit merge NAME --r R | --target-macs F [--json]``: token merging (ToMe, Bolya et al., ICLR 2023)
applied off the shelf, measured against the dense model in the ``prunekit profile --json`` shape."""
from __future__ import annotations

from prunekit.cli.common import add_measure_args, compare, print_result, resolve_model
from prunekit.measure import profile


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge tokens in a transformer (ToMe) and measure it against dense")
    p.add_argument("model", help="zoo name, timm:<name> or saved model path")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--r", type=int, help="tokens merged per layer (constant)")
    how.add_argument("--target-macs", type=float, metavar="F",
                     help="fraction of the dense MACs to keep (e.g. 0.62); r is solved for")
    p.add_argument("--no-prop-attn", action="store_true", help="disable proportional attention")
    add_measure_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from prunekit.tokens import merge, schedule_of

    wl = resolve_model(args.model)
    evaluate = lambda m: wl.evaluate(m, limit=args.limit)
    dense = profile(wl.model, wl.example_inputs, evaluate, repeats=args.repeats)
    merge(wl.model, r=args.r if args.r is not None else 0, prop_attn=not args.no_prop_attn,
          target_macs=args.target_macs, example_inputs=wl.example_inputs)
    result = compare(dense, profile(wl.model, wl.example_inputs, evaluate, repeats=args.repeats))
    schedule = schedule_of(wl.model)
    result["model"] = wl.name
    result["tome"] = {"r": getattr(schedule, "r", None), "schedule": repr(schedule),
                      "prop_attn": not args.no_prop_attn, "target_macs": args.target_macs}
    print_result(result, args.json)
    return 0
