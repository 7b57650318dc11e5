"""What ``finetune``, ``prune`` and ``sparsify`` share to train a model on the user's data.

``--data SPEC`` is ``imagefolder:DIR``, ``hf:DIR`` (see :mod:`prunekit.train.data`) or a zoo name
(``fmnist-resnet``, ``fmnist-vit``: Fashion-MNIST with the zoo's augmentation). Validation is
``--val SPEC`` or ``--val-split F`` (a seeded share of the training data); a zoo model without
``--data`` trains on its own data and validates on its own eval split.

Everything here that can fail on the user's input (:func:`check_args`) runs before any model is built.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.train.data import check_spec, describe, hf_text, image_folder, num_classes, split

__all__ = ["add_train_args", "check_args", "Data", "load_data", "recover", "check_teacher", "example_of"]


def add_train_args(p, data_help: str = "training data: imagefolder:DIR, hf:DIR or a zoo name") -> None:
    p.add_argument("--data", default=None, help=data_help)
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val", default=None, help="validation data, same forms as --data")
    val.add_argument("--val-split", type=float, default=None, help="hold out this share of --data (seeded)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3 for images from "
                   "scratch heads, the zoo's recipe for zoo data, 5e-5 for Hugging Face text)")
    p.add_argument("--batch", type=int, default=64, help="batch size per process")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW decay (default 0.05; the zoo's recipe "
                   "for zoo data)")
    p.add_argument("--img-size", type=int, default=None, help="resize images to this side (default: the model's)")
    p.add_argument("--crop-scale", type=float, default=None,
                   help="smallest area share of the training random-resized crop (timm's default 0.08)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text sample (hf: data)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--distill-weight", type=float, default=0.5, help="share of the loss from the teacher")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default: OUT.ckpt next to --out)")
    p.add_argument("--resume", action="store_true", help="continue the run whose checkpoints are there")
    p.add_argument("--seed", type=int, default=0)


def _checkpoint_dir(args) -> str | None:
    if args.checkpoint_dir:
        return args.checkpoint_dir
    out = getattr(args, "out", None)
    return f"{out}.ckpt" if out else None


def _sub(folder: str | None, subdir: str | None) -> str | None:
    return f"{folder}/{subdir}" if folder and subdir else folder


def check_args(args, epochs: float, command: str) -> None:
    """One-line refusals (``PruningError``) of bad training input; reads only the file system."""
    if not epochs > 0:
        raise PruningError(f"--epochs {epochs:g}", command, "give a positive number of epochs")
    if args.batch < 1:
        raise PruningError(f"--batch {args.batch}", command, "give a batch size >= 1")
    if args.lr is not None and not args.lr > 0:
        raise PruningError(f"--lr {args.lr:g}", command, "give a positive learning rate")
    if not 0 <= args.distill_weight <= 1:
        raise PruningError(f"--distill-weight {args.distill_weight:g}", command, "give a weight in [0, 1]")
    if args.crop_scale is not None and not 0 < args.crop_scale <= 1:
        raise PruningError(f"--crop-scale {args.crop_scale:g}", command, "give an area share in (0, 1]")
    if args.val_split is not None and not 0 < args.val_split < 1:
        raise PruningError(f"--val-split {args.val_split:g}", command, "give a fraction in (0, 1)")
    for spec in (args.data, args.val):
        if spec is not None:
            kind, name = check_spec(spec)
            if kind == "name":
                _zoo_data_check(name)
    if args.resume:
        from prunekit.train.checkpoint import latest
        folder = _checkpoint_dir(args)
        if folder is None or latest(folder) is None:
            raise PruningError(f"--resume ({folder or 'no --checkpoint-dir or --out'})", command,
                               "no checkpoint to continue from; run once without --resume (same --out or "
                               "--checkpoint-dir) first")


def _zoo_data_check(name: str) -> None:
    from prunekit.zoo import NAMES
    from prunekit.zoo.finetune import FINETUNE_LR
    if name not in FINETUNE_LR:
        known = "a zoo name without training data" if name in NAMES else "not a data spec"
        raise PruningError(name, "read the data", f"{known}; give imagefolder:DIR, hf:DIR or one of "
                           f"{sorted(FINETUNE_LR)}")


@dataclass
class Data:
    """Built training and validation data, with what the output reports about them."""

    train: Any
    val: Any
    classes: int | None
    info: dict = field(default_factory=dict)
    steps_per_epoch: int | None = None
    input_size: tuple | None = None
    zoo: str | None = None
    lr: float = 1e-3
    weight_decay: float | None = None


def _build(spec: str, model: nn.Module, train: bool, args, tokenizer) -> Any:
    kind, where = check_spec(spec)
    if kind == "imagefolder":
        return image_folder(where, model, train, args.img_size, args.crop_scale)
    if kind == "hf":
        if tokenizer is None:
            raise PruningError(spec, "read the data", "text data needs a Hugging Face model with a tokenizer "
                               "(hf:<dir or hub id>, or minilm)")
        return hf_text(where, tokenizer, "train" if train else "validation", args.max_length)
    raise AssertionError(kind)


def load_data(args, model: nn.Module, zoo_name: str | None = None, tokenizer=None) -> Data:
    """The training and validation data that ``args`` name, for ``model`` (``zoo_name``: its zoo workload)."""
    spec = args.data or zoo_name
    if spec is None:
        raise PruningError("--data", "train", "give training data: imagefolder:DIR, hf:DIR or a zoo name")
    kind, name = check_spec(spec)
    if kind == "name":
        from prunekit.zoo import entry
        from prunekit.zoo import load as load_zoo
        from prunekit.zoo.finetune import FINETUNE_LR, fmnist_batches
        _zoo_data_check(name)
        stream, spe = fmnist_batches(128 if args.batch == 64 else args.batch)
        wl = load_zoo(name)
        return Data(stream, wl.evaluate, 10, {"train": {"spec": name, "samples": 60000, "classes": 10},
                                               "val": {"spec": f"{name} eval split"}}, spe, None, name,
                    FINETUNE_LR[name], entry(name).finetune_weight_decay)
    train = _build(spec, model, True, args, tokenizer)
    if args.val is not None:
        val = _build(args.val, model, False, args, tokenizer)
    elif args.val_split is not None:
        train, val = split(train, args.val_split, args.seed)
        if kind == "imagefolder":  # the held-out share is read without training augmentation
            val.dataset = copy.copy(val.dataset)
            val.dataset.transform = image_folder(check_spec(spec)[1], model, False, args.img_size).transform
    else:
        val = None
    if len(train) < args.batch:
        raise PruningError(spec, "train", f"{len(train)} training samples are fewer than one batch of "
                           f"{args.batch}; lower --batch")
    info = {"train": describe(spec, train)}
    if val is not None:
        info["val"] = describe(args.val or f"{args.val_split:g} of {spec}", val)
    lr = 5e-5 if kind == "hf" else 1e-3
    return Data(train, val, num_classes(train), info, None, getattr(train, "prunekit_input_size", None), None, lr)


def check_teacher(teacher: nn.Module, model: nn.Module, example: Any) -> None:
    """Refuse a teacher whose output does not have the student's shape (before any training)."""
    from prunekit.train.losses import outputs_of
    with torch.no_grad():
        args, kw = (example, {}) if isinstance(example, tuple) else ((), example)
        t, _ = outputs_of(teacher.eval()(*args, **kw))
        s, _ = outputs_of(model.eval()(*args, **kw))
    if t.shape != s.shape:
        raise PruningError("--teacher", "distil", f"the teacher outputs {tuple(t.shape)} but the model "
                           f"{tuple(s.shape)}; give a teacher trained on the same classes")


def _loader(ds: Any, batch: int, shuffle: bool, workers: int, drop_last: bool) -> Any:
    from torch.utils.data import DataLoader
    return DataLoader(ds, batch_size=batch, shuffle=shuffle, num_workers=workers, drop_last=drop_last)


def validate(model: nn.Module, data: Data, args) -> dict:
    """Top-1 on the validation data (``{}`` without any)."""
    from prunekit.train import evaluate
    if data.val is None:
        return {}
    if callable(data.val) and not hasattr(data.val, "__len__"):
        return {"top1": round(data.val(model)["top1"], 4)}
    return evaluate(model, _loader(data.val, max(args.batch, 64), False, args.workers, False))


def recover(model: nn.Module, data: Data, args, epochs: float, teacher: nn.Module | None = None,
            callbacks=(), desc: str = "fine-tune", subdir: str | None = None) -> dict:
    """Train ``model`` on ``data`` for ``epochs`` with the CLI's options; returns the training summary."""
    from prunekit.train import fit
    if data.steps_per_epoch:  # a zoo stream
        train = data.train
    else:
        train = _loader(data.train, args.batch, True, args.workers, True)
    res = fit(model, train, epochs=epochs, lr=args.lr or data.lr, steps_per_epoch=data.steps_per_epoch,
              batch=args.batch, optimizer=args.optimizer,
              weight_decay=args.weight_decay if args.weight_decay is not None else data.weight_decay or 0.05,
              label_smoothing=0.1 if data.zoo else 0.0, distill_weight=args.distill_weight,
              seed=args.seed, teacher=teacher, callbacks=callbacks, desc=desc,
              checkpoint_dir=_sub(_checkpoint_dir(args), subdir), resume=bool(args.resume))
    out = {"steps": res.steps, "epochs": res.epochs, "world_size": res.world_size,
           "seconds": round(res.seconds, 1), "images_per_s": round(res.images_per_s, 1),
           "last_loss": round(res.last_loss, 4), "lr": args.lr or data.lr, "batch": args.batch,
           "distilled": teacher is not None, "data": data.info}
    if res.resumed_from is not None:
        out["resumed_from_step"] = res.resumed_from
    return out


def saved_meta(data: Data, meta: dict) -> dict:
    """Metadata a trained model is saved with, so that ``prunekit profile/prune FILE`` can feed it."""
    out = dict(meta)
    if data.input_size:
        out["input_size"] = list(data.input_size)
    if data.classes:
        out["classes"] = data.classes
    return out


def prepare(args, wl, epochs: float, command: str, distill: bool = False) -> Data | None:
    """For ``prune`` / ``sparsify`` with ``--data`` (to fine-tune on, and ``--val`` to measure on): the data,
    with the head matched to its classes and ``wl.example_inputs`` set from it, or ``None``
    when a zoo classifier trains on its own data (the built-in fine-tune). Refuses what cannot work."""
    from prunekit.train.heads import match_head
    from prunekit.zoo.finetune import FINETUNE_LR
    meta = getattr(wl.model, "prunekit_meta", None) or {}
    base = meta.get("zoo") or wl.name
    if args.data is None and (not epochs or base in FINETUNE_LR):
        if args.val is not None or args.val_split is not None:
            raise PruningError("--val", command, "validation needs --data too (the training data it goes with)")
        return None
    if args.data is None:
        raise PruningError(wl.name, command, "training it needs data: give --data imagefolder:DIR, hf:DIR or a zoo "
                           f"name (the built-in fine-tune exists for {sorted(FINETUNE_LR)} only)")
    check_args(args, epochs or 1.0, command)  # with no training, --data/--val still set what is measured
    data = load_data(args, wl.model, None, (wl.info or {}).get("tokenizer"))
    torch.manual_seed(args.seed)
    head = match_head(wl.model, data.classes) if data.classes else None
    if head and distill:
        raise PruningError("--distill", command, f"{head}, so the dense teacher would have an untrained head; "
                           "fine-tune the dense model on this data first (prunekit finetune MODEL --data ... "
                           "--out dense.safetensors) and prune that file")
    data.info["head"] = head
    wl.example_inputs = example_of(data, wl)
    return data


def example_of(data, wl):
    """One input batch the model is really fed (shapes from the data, for tracing and checks)."""
    ds = data.val if data.val is not None and hasattr(data.val, "__getitem__") else data.train
    if hasattr(ds, "__getitem__") and hasattr(ds, "__len__"):
        item = ds[0]
        if isinstance(item, dict):
            return {k: v[None] for k, v in item.items() if k != "labels"}
        return (item[0][None],)
    return wl.example_inputs
