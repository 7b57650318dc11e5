"""``prunekit sparsify NAME --sparsity S --out PATH``: unstructured / N:M / block sparsity, one-shot or gradual.

With ``--gradual-epochs E`` (zoo classifiers) the sparsity is not applied at once: the built-in
fine-tune trains ``E`` epochs while :class:`prunekit.sparse.GradualPruner` raises it on the cubic
schedule over the first ``--gradual-ramp`` of the steps.

Profiles the dense model, sparsifies it, bakes the masks in (``finalize``), profiles again and saves
the result compressed with ``prunekit.save``. Prints the ``profile`` shape of the sparse model with
``dense``, ``ratios``, ``sparsity`` and the file sizes.

>>> main(["sparsify", "fmnist-vit", "--sparsity", "0.5", "--out", "/tmp/vit50.safetensors"])  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from prunekit.cli.common import (
    add_criterion,
    add_measure_args,
    check_out,
    measured,
    origin_meta,
    print_result,
    require_finetune,
    resolve_model,
)
from prunekit.cli.recover import add_train_args, prepare, recover, saved_meta, validate
from prunekit.measure import profile


def register(sub) -> None:
    p = sub.add_parser("sparsify", help="zero individual weights (magnitude / wanda / sparsegpt / random; "
                                        "unstructured, N:M, block) and save the model compressed")
    p.add_argument("model", help="zoo name, timm:<name>, hf:<dir>, a save_pretrained directory or a saved model path")
    p.add_argument("--sparsity", type=float, default=None,
                   help="fraction of weights to remove, in [0, 1) (N:M patterns fix it at 1 - N/M)")
    add_criterion(p, "--method", default="magnitude", choices=["magnitude", "wanda", "sparsegpt", "random"],
                  help="weight score: magnitude, wanda, sparsegpt (these two calibrate on --calib samples; "
                       "sparsegpt also updates the kept weights) or random")
    p.add_argument("--pattern", default="unstructured", help="unstructured, N:M (e.g. 2:4) or block:HxW")
    p.add_argument("--scope", default="global", choices=["global", "local", "owl", "layer"],
                   help="global: one threshold over all layers; local: each layer at --sparsity ('layer' is its "
                        "old name); owl: per-layer ratios from outlier activations, --sparsity over all layers")
    p.add_argument("--ignore", nargs="*", default=[], help="module names or fnmatch patterns to leave dense")
    p.add_argument("--calib", type=int, default=256,
                   help="calibration samples for --criterion wanda / sparsegpt and --scope owl")
    p.add_argument("--kernels", default=None, choices=["auto", "csr", "bsr", "semi"],
                   help="swap Linear layers for sparse kernels (auto: only where a timing shows a speed-up)")
    p.add_argument("--gradual-epochs", type=float, default=0.0,
                   help="prune during this many epochs of the built-in fine-tune (zoo classifiers), not one-shot")
    p.add_argument("--gradual-ramp", type=float, default=0.75,
                   help="share of the fine-tune's steps over which the sparsity rises (the rest trains at it)")
    p.add_argument("--gradual-every", type=int, default=10, help="optimizer steps between sparsity updates")
    p.add_argument("--finetune-epochs", type=float, default=0.0,
                   help="after a one-shot cut, fine-tune this long with the zeros kept (on --data, or the built-in "
                        "fine-tune of a zoo classifier)")
    p.add_argument("--distill", action="store_true", help="fine-tune with the dense model as teacher")
    add_train_args(p, "training data for --gradual-epochs / --finetune-epochs: imagefolder:DIR, hf:DIR or a zoo "
                      "name")
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    add_measure_args(p)
    p.set_defaults(func=run)


def calibration(wl, n: int) -> Any:
    """Calibration batches for ``wl``: training images, corpus sentences disjoint from eval, or the example."""
    if wl.name in ("fmnist-resnet", "fmnist-vit"):
        from prunekit.data import load_fashion_mnist, normalize
        x, _ = load_fashion_mnist("train")
        x = normalize(x[:n])
        return [(x[i:i + 64],) for i in range(0, len(x), 64)]
    if wl.name == "minilm":
        from prunekit.zoo.minilm import calibration_batches
        return calibration_batches(n)
    return [wl.example_inputs]


def run(args) -> int:
    import prunekit
    from prunekit.errors import PruningError
    from prunekit.sparse.oneshot import _check_args
    check_out(args.out, "sparsify")
    try:  # fail on bad arguments before the (slow) dense profile
        _check_args(args.sparsity, args.criterion, args.scope, args.pattern, calib=True)
    except PruningError as e:
        raise SystemExit(f"prunekit sparsify: {e}") from None
    wl = resolve_model(args.model)
    base = (getattr(wl.model, "prunekit_meta", None) or {}).get("zoo") or wl.name
    if args.gradual_epochs and args.finetune_epochs:
        raise SystemExit("prunekit sparsify: --gradual-epochs already trains at the final sparsity after its ramp; "
                         "give one of --gradual-epochs and --finetune-epochs")
    data = prepare(args, wl, args.gradual_epochs or args.finetune_epochs, "sparsify", args.distill)
    if args.gradual_epochs:
        _check_gradual(args, base, data)
    evaluate = (lambda m: wl.evaluate(m, limit=args.limit)) if data is None or data.val is None else \
        (lambda m: validate(m, data, args))
    dense_model = copy.deepcopy(wl.model)  # timed against the sparse model in one run at the end
    teacher = dense_model if args.distill and (args.finetune_epochs or args.gradual_epochs) else None
    dense = profile(wl.model, wl.example_inputs, evaluate, repeats=1, warmup=0)
    with tempfile.TemporaryDirectory() as tmp:
        prunekit.save(wl.model, Path(tmp) / "dense.safetensors")
        dense_bytes = (Path(tmp) / "dense.safetensors").stat().st_size
    calibrated = args.criterion in ("wanda", "sparsegpt") or args.scope == "owl"
    calib = calibration(wl, args.calib) if calibrated else None
    options = {"criterion": args.criterion, "pattern": args.pattern, "scope": args.scope, "calib": calib,
               "ignore": args.ignore}
    try:
        res, training = (_gradual(wl.model, base, args, options, data, teacher) if args.gradual_epochs
                         else (prunekit.sparsify(wl.model, args.sparsity, **options), None))
    except PruningError as e:
        raise SystemExit(f"prunekit sparsify: {e}") from None
    if args.finetune_epochs:
        if data is not None:
            training = recover(wl.model, data, args, args.finetune_epochs, teacher)
        else:
            from prunekit.zoo.finetune import finetune
            training = finetune(wl.model, base, args.finetune_epochs, teacher=teacher)
    plan = prunekit.finalize(wl.model, kernels=args.kernels, example_inputs=wl.example_inputs)
    meta = {"sparsify": {"sparsity": res.target, "method": res.method, "pattern": res.pattern, "scope": res.scope}}
    key = "gradual" if args.gradual_epochs else "finetune"
    if training:
        meta["sparsify"][key] = training
    meta.update(origin_meta(wl))
    if data is not None:
        meta = saved_meta(data, meta)
    prunekit.save(wl.model, args.out, meta=meta)
    out = measured(wl, dense_model, dense, "sparsify", evaluate, args)
    out["ratios"]["nonzero_params"] = round(out["nonzero_params"] / dense["nonzero_params"], 4)
    out["sparsity"] = {"target": res.target, "achieved": res.total, "method": res.method, "pattern": res.pattern,
                       "scope": res.scope, "layers": len(res.layers), "coverage": round(res.coverage, 4),
                       "untouched": res.untouched}
    if training:
        out["sparsity"][key] = training
    out["file_bytes"] = Path(args.out).stat().st_size
    out["dense_file_bytes"] = dense_bytes
    out["ratios"]["file"] = round(out["file_bytes"] / dense_bytes, 4)
    if plan:
        out["kernels"] = {k: sum(p["kernel"] == k for p in plan.values()) for k in ("dense", "csr", "bsr", "semi")}
    out["out"] = str(args.out)
    print_result(out, args.json)
    return 0


def _check_gradual(args, base: str, data) -> None:
    """Refuse ``--gradual-*`` settings that cannot work, before the (slow) dense profile."""
    if data is None:
            require_finetune("sparsify", "--gradual-epochs", base, "give --data, or use prunekit.train.GradualPruning "
                         "in your own training loop")
    from prunekit.sparse.masks import parse_pattern
    if parse_pattern(args.pattern).kind == "nm":
        raise SystemExit(f"prunekit sparsify: pattern {args.pattern} fixes the sparsity, so there is nothing to "
                         "ramp; drop --gradual-epochs (and fine-tune with prunekit prune/finetune afterwards)")
    if not 0 < args.gradual_ramp <= 1:
        raise SystemExit(f"prunekit sparsify: --gradual-ramp must lie in (0, 1], got {args.gradual_ramp}")


def _gradual(model, base: str, args, options: dict, data=None, teacher=None):
    """Fine-tune ``model`` for ``--gradual-epochs`` while a :class:`GradualPruner` raises its sparsity."""
    if data is not None:
        from prunekit.train import GradualPruning
        cb = GradualPruning(args.sparsity, start=0.0, end=args.gradual_ramp, every=args.gradual_every, **options)
        info = recover(model, data, args, args.gradual_epochs, teacher, callbacks=[cb], desc="gradual sparsity")
        return cb.pruner.result, {**info, "ramp": args.gradual_ramp, "updates": len(cb.pruner.history)}
    from prunekit.sparse import GradualPruner
    from prunekit.zoo.finetune import finetune, finetune_steps
    steps = finetune_steps(args.gradual_epochs)
    end = max(2, int(round(steps * args.gradual_ramp)))
    if end > steps:
        raise SystemExit(f"prunekit sparsify: --gradual-epochs {args.gradual_epochs:g} is {steps} steps, too few to "
                         "ramp the sparsity; give more epochs")
    pruner = GradualPruner(model, args.sparsity, end_step=end, every=min(args.gradual_every, end), **options)
    info = finetune(model, base, args.gradual_epochs, on_step=lambda s: pruner.step())
    return pruner.result, {**info, "ramp_steps": end, "updates": len(pruner.history)}
