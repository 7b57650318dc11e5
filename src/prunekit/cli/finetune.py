"""``prunekit finetune MODEL --data SPEC [--val SPEC | --val-split F] --epochs E [--teacher MODEL] [--out PATH]``.

Trains any model (a zoo name, ``timm:<name>``, ``hf:<dir or hub id>`` or a saved prunekit file) on
your data with :func:`prunekit.train.fit`: the recovery fine-tune after pruning, with knowledge
distillation from ``--teacher`` (usually the dense model before pruning). When the data has another
number of classes than the model's head, the head is replaced (timm ``reset_classifier``, Hugging
Face ``num_labels``) and the output says so. Under ``torchrun --nproc_per_node N -m prunekit
finetune ...`` it trains in DDP (NCCL on GPUs, gloo on CPUs). ``--json`` prints one object with
``top1``, ``steps``, ``epochs``, ``world_size`` and ``seconds``.

>>> main(["finetune", "timm:resnet18", "--data", "imagefolder:imgs/train", "--val-split", "0.1",
...       "--epochs", "1", "--img-size", "64", "--out", "r18.safetensors"])   # doctest: +SKIP
"""
from __future__ import annotations

from prunekit.cli.common import check_out, compare, origin_meta, print_result, resolve_model
from prunekit.cli.recover import (
    add_train_args,
    check_args,
    check_teacher,
    example_of,
    load_data,
    recover,
    saved_meta,
    validate,
)


def register(sub) -> None:
    p = sub.add_parser("finetune", help="train a model on your data: recovery after pruning, with distillation")
    p.add_argument("model", help="zoo name, timm:<name>, hf:<dir or hub id> or a saved model path")
    p.add_argument("--epochs", type=float, required=True, help="passes over the training data (may be fractional)")
    p.add_argument("--teacher", default=None, help="distil from this model (same forms as MODEL)")
    add_train_args(p)
    p.add_argument("--out", default=None, help="save the trained model here (.safetensors)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    import prunekit
    from prunekit.train import distributed as D
    from prunekit.train.heads import match_head
    check_args(args, args.epochs, "fine-tune")
    check_out(args.out, "fine-tune")
    torch.manual_seed(args.seed)  # a new head's (and a timm model's) initial weights come from it
    wl = resolve_model(args.model)
    meta = dict(getattr(wl.model, "prunekit_meta", None) or {})
    zoo = meta.get("zoo") or (wl.name if wl.task not in ("timm", "hf", "model") else None)
    data = load_data(args, wl.model, zoo, getattr(wl, "tokenizer", None) or (wl.info or {}).get("tokenizer"))
    head = match_head(wl.model, data.classes) if data.classes and not data.zoo else None
    example = example_of(data, wl)
    teacher = None
    if args.teacher:
        teacher = resolve_model(args.teacher).model
        check_teacher(teacher, wl.model, example)
    before = validate(wl.model, data, args)
    info = recover(wl.model, data, args, args.epochs, teacher)
    after = validate(wl.model, data, args)
    result = {"model": wl.name, "top1": after.get("top1"), "top1_before": before.get("top1"), **info}
    if D.is_main():  # the shape every verb prints; fine-tuning changes no shape, so one model is timed
        from prunekit.measure import paired_timings, profile
        p = profile(wl.model, example, repeats=1, warmup=0, memory=False)
        timing = paired_timings(wl.model, wl.model, example, repeats=3)
        shape = compare({**p, "model": wl.name, "metric": before}, {**p, "metric": after}, "finetune", timing)
        result = {**shape, **result, "dense": {**shape["dense"], "method": "before fine-tuning"}}
        del result["ratios"]
    if head:
        result["head"] = head
    if args.out and D.is_main():
        keep = origin_meta(wl)
        if "prune" in meta:  # the pruning that came before this fine-tune
            keep["prune"] = meta["prune"]
        prunekit.save(wl.model, args.out, meta=saved_meta(data, {**keep, "finetune": info}))
        result["out"] = args.out
    if D.is_main():
        print_result(result, args.json)
    return 0

