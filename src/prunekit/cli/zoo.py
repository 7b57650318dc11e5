"""``prunekit zoo list|train NAME``: the reference models and their training recipes."""
from __future__ import annotations

import json
import sys

from prunekit.zoo import NAMES, entry, read_manifest


def register(sub) -> None:
    p = sub.add_parser("zoo", help="list or train the reference models")
    zsub = p.add_subparsers(dest="zoo_command", required=True)
    ls = zsub.add_parser("list", help="models and their recorded metrics")
    ls.add_argument("--json", action="store_true", help="print one JSON object: model -> recorded metric")
    ls.set_defaults(func=run_list)
    t = zsub.add_parser("train", help="train NAME on the CPU and write its checkpoint + manifest entry")
    t.add_argument("name", choices=[n for n in NAMES if entry(n).recipe is not None])  # minilm: published weights
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quick", action="store_true", help="a tiny smoke run (not a usable model)")
    t.add_argument("--more-epochs", type=float, default=0.0,
                   help="continue the shipped checkpoint for E more epochs of its last stage; without --budget-minutes "
                        "it checkpoints, and the same command resumes a stopped run "
                        f"({', '.join(n for n in NAMES if entry(n).more is not None)})")
    t.add_argument("--device", default=None, help="with --more-epochs: train on this torch device (e.g. cuda)")
    t.add_argument("--batch", type=int, default=None, help="with --more-epochs: batch size (default: the stage's)")
    t.add_argument("--lr", type=float, default=None, help="with --more-epochs: peak learning rate")
    t.add_argument("--samples", type=int, default=None,
                   help="with --more-epochs: training samples (mosaics and clips are generated, so more can be made)")
    t.add_argument("--shift", type=int, default=None,
                   help="with --more-epochs, mosaic-segvit: shift mosaic and label map together by up to PX pixels")
    t.add_argument("--sample-offset", dest="offset", type=int, default=None,
                   help="with --more-epochs, mosaic-segvit: take the training mosaics from index N on "
                        "(past earlier stages' sets, so all are new to the model)")
    t.add_argument("--decoder-only", action="store_const", const=True, default=None,
                   help="with --more-epochs, mosaic-segvit: train the decoder and refinement head, encoder frozen")
    t.add_argument("--stream", action="store_const", const=True, default=None,
                   help="with --more-epochs, mosaic-segvit: new mosaics for every batch, rendered on the training "
                        "device (--samples: the epoch length)")
    t.add_argument("--budget-minutes", type=float, default=None,
                   help="with --more-epochs: time the first steps, then cut the epochs to fit this many minutes")
    t.add_argument("--out-dir", default=None, help="write here instead of the shipped checkpoints")
    t.set_defaults(func=run_train)


def _flag(key: str, value) -> str:
    """A continuation option as the command line gave it (recorded in the manifest's command)."""
    from prunekit.zoo.train import option_flag
    flag = " " + option_flag(key)
    if value is True:
        return flag
    return f"{flag} {f'{value:g}' if isinstance(value, float) else value}"


def run_list(args) -> int:
    manifest = read_manifest()
    metrics = {name: manifest.get(name, {}).get("metric") or (
        {"reference": "pretrained weights"} if entry(name).pretrained else
        {"reference": f"no checkpoint shipped (prunekit zoo train {name})"}) for name in NAMES}
    if getattr(args, "json", False):
        print(json.dumps({"models": metrics}, sort_keys=True))
        return 0
    for name, metric in metrics.items():
        print(f"{name:15} {json.dumps(metric)}")
    return 0


def run_train(args) -> int:
    from prunekit.zoo.train import More, train_model
    cmd = f"prunekit zoo train {args.name}" + (f" --seed {args.seed}" if args.seed else "")
    if args.more_epochs:
        from prunekit.zoo import read_manifest
        cmd = f"{read_manifest()[args.name]['command']}; {cmd} --more-epochs {args.more_epochs:g}"
    options = {k: getattr(args, k) for k in ("device", "batch", "lr", "samples", "budget_minutes", "shift",
                                             "offset", "decoder_only", "stream")}
    if any(v is not None for v in options.values()) and not args.more_epochs:
        print("error: --device, --batch, --lr, --samples, --budget-minutes, --shift, --sample-offset, "
              "--decoder-only and --stream set up a continuation; add --more-epochs E", file=sys.stderr)
        return 2
    if args.more_epochs:
        cmd += "".join(_flag(k, v) for k, v in options.items() if v is not None)
    try:
        more = More(args.more_epochs, **options) if args.more_epochs else None
        entry = train_model(args.name, seed=args.seed, quick=args.quick, out_dir=args.out_dir, command=cmd,
                            more=more)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(entry, indent=2))
    return 0
