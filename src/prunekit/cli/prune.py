"""``prunekit prune NAME --ratio R | --target-macs F [--criterion ...] [--finetune-epochs E] --out PATH``.

``--slimming-epochs E`` (zoo classifiers with BatchNorm) first trains ``E`` epochs of the built-in
fine-tune with Network Slimming's L1 penalty on the BatchNorm scales (``--slimming-strength``), then
prunes by those scales (``--criterion`` defaults to ``bn_scale`` then). ``--rounds K`` cuts in
``K`` rounds (:func:`prunekit.structured.prune_iteratively`), each followed by ``1/K`` of the
``--finetune-epochs``.

Prunes a zoo model, ``timm:<name>`` or a saved model, prints dense vs pruned params, MACs, latency
and task metric in the ``prunekit profile --json`` shape (with ``dense`` and ``ratios``), and saves
the pruned model with ``prunekit.save``.
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
    require_finetune,
    resolve_model,
)
from prunekit.cli.recover import add_train_args, prepare, recover, saved_meta, validate


def register(sub) -> None:
    p = sub.add_parser("prune", help="structured pruning of channels, neurons and heads")
    p.add_argument("model", help="zoo name, timm:<name> or a saved model path")
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--ratio", type=float, help="fraction of channels/heads to remove")
    amount.add_argument("--target-macs", type=float, help="fraction of MACs to keep (searched to within 2%%)")
    add_criterion(p, "--importance", default=None, choices=["l1", "l2", "bn_scale", "taylor", "random"],
                  help="channel/head score (default l2; bn_scale with --slimming-epochs)")
    p.add_argument("--scope", default="global", choices=["global", "local"])
    p.add_argument("--units", default="channels,heads", help="comma list of channels,heads")
    p.add_argument("--round-to", type=int, default=None, help="keep channel counts a multiple of this")
    p.add_argument("--on-failure", default="raise", choices=["raise", "skip"],
                   help="skip: leave module classes whose forward breaks as they are, and prune the rest")
    p.add_argument("--finetune-epochs", type=float, default=0.0,
                   help="recovery fine-tune after the cut: on --data (any model) or, for zoo classifiers without "
                        "--data, the built-in one")
    p.add_argument("--finetune-samples", type=int, default=None, help="fine-tune on the first N training images")
    p.add_argument("--distill", action="store_true",
                   help="fine-tune with the dense model as teacher (knowledge distillation)")
    p.add_argument("--rounds", type=int, default=1,
                   help="cut in this many rounds, each followed by its share of --finetune-epochs")
    p.add_argument("--slimming-epochs", type=float, default=0.0,
                   help="before pruning, train this many epochs with an L1 penalty on BatchNorm scales")
    p.add_argument("--slimming-strength", type=float, default=1e-4, help="the penalty's lambda")
    add_measure_args(p)
    add_train_args(p, "fine-tune data: imagefolder:DIR, hf:DIR or a zoo name (see prunekit finetune)")
    p.add_argument("--out", required=True, help="where to save the pruned model (.safetensors)")
    p.set_defaults(func=run)


def _calib(wl, data=None):
    """Calibration batches for taylor importance: training images with labels (the user's, or the zoo's)."""
    if data is not None and not data.steps_per_epoch:
        from torch.utils.data import DataLoader
        return [b for b, _ in zip(DataLoader(data.train, batch_size=32, shuffle=False), range(4), strict=False)]
    if wl.name in ("fmnist-resnet", "fmnist-vit"):
        from prunekit.data import load_fashion_mnist, normalize
        x, y = load_fashion_mnist("train")
        return [(normalize(x[i:i + 64]), y[i:i + 64]) for i in range(0, 256, 64)]
    return [wl.example_inputs]


def run(args) -> int:
    import prunekit
    from prunekit.measure import profile
    check_range("--ratio", args.ratio, 0, 1, hi_open=True, command="prune")
    check_range("--target-macs", args.target_macs, 0, 1, lo_open=True, command="prune")
    check_out(args.out, "prune")
    wl = resolve_model(args.model)
    base = (getattr(wl.model, "prunekit_meta", None) or {}).get("zoo", wl.name)
    importance = args.criterion or ("bn_scale" if args.slimming_epochs else "l2")
    penalty = _slimming_check(wl, base, args) if args.slimming_epochs else None
    data = prepare(args, wl, args.finetune_epochs, "prune", args.distill)
    _rounds_check(base, args, data)
    evaluate = (lambda m: wl.evaluate(m, limit=args.limit)) if data is None or data.val is None else \
        (lambda m: validate(m, data, args))
    before = profile(wl.model, wl.example_inputs, evaluate, repeats=1, warmup=0)
    dense_model = copy.deepcopy(wl.model)  # timed against the pruned model in one run at the end
    teacher = dense_model if args.finetune_epochs and args.distill else None
    slimming = None
    if penalty is not None:
        from prunekit.zoo.finetune import finetune
        slimming = {**finetune(wl.model, base, args.slimming_epochs, regularizer=penalty),
                    "strength": args.slimming_strength}
    options = dict(criterion=importance, scope=args.scope, units=tuple(u for u in args.units.split(",") if u),
                   round_to=args.round_to, calib=_calib(wl, data) if importance == "taylor" else None,
                   on_failure=args.on_failure)
    rounds: list[dict] = []
    if args.rounds > 1:
        from prunekit.structured import prune_iteratively
        from prunekit.zoo.finetune import finetune

        def train(model, k):
            if data is not None:
                rounds.append(recover(model, data, args, args.finetune_epochs / args.rounds, teacher,
                                      desc=f"fine-tune round {k + 1}", subdir=f"round-{k + 1}"))
                return
            rounds.append(finetune(model, base, args.finetune_epochs / args.rounds, samples=args.finetune_samples,
                                   teacher=teacher, seed=k))
        res = prune_iteratively(wl.model, wl.example_inputs, ratio=args.ratio, target_macs=args.target_macs,
                                rounds=args.rounds, train=train, **options)[-1]
    else:
        res = prunekit.prune(wl.model, wl.example_inputs, ratio=args.ratio, target_macs=args.target_macs, **options)
    info = {"seconds": round(res.seconds, 3), "groups": len(res.decisions),
            "groups_pruned": sum(1 for d in res.decisions if d["removed"]), "criterion": importance,
            "ratio": args.ratio, "target_macs": args.target_macs, "scope": args.scope, "skipped": res.skipped,
            "rounds": args.rounds}
    asked = (args.ratio or 0) > 0 or (args.target_macs is not None and args.target_macs < 1)
    if asked and not info["groups_pruned"]:
        from prunekit.errors import PruningError
        raise PruningError(wl.name, "prune", f"nothing was removed: no group of {args.units} could be cut "
                           f"({len(res.decisions)} groups found, skipped: {res.skipped or 'none'}); try other "
                           "--units, a larger --ratio, or check the model with prunekit.groups(model, inputs)")
    if slimming:
        info["slimming"] = slimming
    if rounds:
        info["finetune_rounds"] = rounds
    elif args.finetune_epochs and data is not None:
        info["finetune"] = recover(wl.model, data, args, args.finetune_epochs, teacher)
    elif args.finetune_epochs:
        from prunekit.zoo.finetune import finetune
        info["finetune"] = finetune(wl.model, base, args.finetune_epochs, samples=args.finetune_samples,
                                    teacher=teacher)
    result = measured(wl, dense_model, before, "prune", evaluate, args)
    result["prune"] = info
    meta = {**origin_meta(wl), "prune": info}
    if data is not None:
        meta = saved_meta(data, meta)
        if data.info.get("head"):
            result["head"] = data.info["head"]
    prunekit.save(wl.model, args.out, meta=meta)
    result["out"] = args.out
    print_result(result, args.json)
    return 0


def _slimming_check(wl, base: str, args):
    """The Network Slimming penalty for ``wl``'s model, or a clear exit before anything is measured."""
    from prunekit.errors import PruningError
    from prunekit.structured import slimming_penalty
    require_finetune("prune", "--slimming-epochs", base, "add prunekit.slimming_penalty(model) to your own "
                     "training loss")
    try:
        return slimming_penalty(wl.model, args.slimming_strength)
    except PruningError as e:
        raise SystemExit(f"prunekit prune: {e}") from None


def _rounds_check(base: str, args, data=None) -> None:
    """Refuse ``--rounds`` settings that cannot run, before anything is measured."""
    if args.rounds < 1:
        raise SystemExit(f"prunekit prune: --rounds must be >= 1, got {args.rounds}")
    if args.rounds > 1 and not args.finetune_epochs:
        raise SystemExit(f"prunekit prune: --rounds {args.rounds} trains between the cuts; give --finetune-epochs "
                         "(shared out over the rounds)")
    if args.rounds > 1 and data is None:
        require_finetune("prune", "--rounds", base, "call prunekit.prune_iteratively with your own train function")
