"""``prunekit drop-layers MODEL --n N | --ratio R [--criterion block_influence|last] [--out PATH] [--json]``.

Removes whole blocks (transformer layers, identity-shortcut ResNet blocks) with
:func:`prunekit.drop_layers`, lowest block influence first (ShortGPT: how little a block changes its
input on calibration data), measures the result against the dense model in one run, and saves it with
``prunekit.save`` when ``--out`` is given.
"""
from __future__ import annotations

import copy

from prunekit.cli.common import (
    add_criterion,
    add_measure_args,
    check_out,
    check_range,
    measured,
    origin_meta,
    print_result,
    resolve_model,
)


def register(sub) -> None:
    p = sub.add_parser("drop-layers", help="remove whole blocks (layers), least influential first")
    p.add_argument("model", help="zoo name, timm:<name>, hf:<dir>, a save_pretrained directory or a saved model path")
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--n", type=int, help="number of blocks to remove")
    amount.add_argument("--ratio", type=float, help="fraction of the blocks to remove")
    add_criterion(p, "--importance", default="block_influence", choices=["block_influence", "last"],
                  help="block_influence (ShortGPT, on calibration data) or last (the deepest go)")
    p.add_argument("--calib", type=int, default=128, help="calibration samples for block_influence")
    p.add_argument("--out", default=None, help="save the model here (.safetensors)")
    add_measure_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import prunekit
    from prunekit.cli.sparsify import calibration
    from prunekit.measure import profile
    check_range("--n", args.n, 1, float("inf"), command="drop-layers")
    check_range("--ratio", args.ratio, 0, 1, lo_open=True, hi_open=True, command="drop-layers")
    check_out(args.out, "drop-layers")
    wl = resolve_model(args.model)
    evaluate = lambda m: wl.evaluate(m, limit=args.limit)
    calib = calibration(wl, args.calib) if args.criterion == "block_influence" else None
    dense = profile(wl.model, wl.example_inputs, evaluate, repeats=1, warmup=0)
    dense_model = copy.deepcopy(wl.model)
    res = prunekit.drop_layers(wl.model, n=args.n, ratio=args.ratio, criterion=args.criterion, calib=calib,
                               example_inputs=wl.example_inputs)
    result = measured(wl, dense_model, dense, "drop-layers", evaluate, args)
    info = {"removed": res.removed_paths, "criterion": args.criterion, "n": args.n, "ratio": args.ratio}
    result["drop_layers"] = info
    if args.out:
        prunekit.save(wl.model, args.out, meta={**origin_meta(wl), "drop_layers": info})
        result["out"] = args.out
    print_result(result, args.json)
    return 0
