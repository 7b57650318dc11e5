"""``prunekit tokens show NAME --r R --out merged.png``: which patches merged into which token (ToMe,
Bolya et al., ICLR 2023), drawn over an input image of the model's workload. ``--video saliency
[--keep F] [--early E] [--background-r R] [--r R]``: a video model's clip as a strip of frames, the
tokens kept out of the early merging outlined and the saliency heat map beneath (vid-TLDR, Choi et
al., CVPR 2024; :func:`prunekit.tokens.show.draw_video_saliency`).

``prunekit tokens dynamic NAME --keep 0.7 --fit-epochs E [--data SPEC] --out PATH``: DynamicViT
(Rao et al., NeurIPS 2021) token scorers before ``--stages``, trained with
:func:`prunekit.train.fit_dynamic` (``--sampling gumbel`` as the paper, or ``topk``; scorers at
``--lr``, the backbone at ``--backbone-lr``, distilled from the dense model), measured against the
dense model in one run and saved with ``prunekit.save``.
"""
from __future__ import annotations

import copy
import dataclasses

from prunekit.cli.common import (
    add_measure_args,
    check_out,
    check_range,
    measured,
    origin_meta,
    print_result,
    resolve_model,
)


def register(sub) -> None:
    p = sub.add_parser("tokens", help="token merging tools")
    tsub = p.add_subparsers(dest="tokens_command", required=True)
    show = tsub.add_parser("show", help="draw the merged tokens over an input image")
    show.add_argument("model", help="zoo name, timm:<name> or saved model path (a ViT)")
    show.add_argument("--r", type=int, help="tokens merged per layer (with --video: in the blocks after the "
                      "early stage, default 0)")
    show.add_argument("--video", choices=("saliency",), default=None,
                      help="draw a video model's clip: the tokens kept out of saliency-aware merging and the "
                      "saliency heat map, one column per time slice")
    show.add_argument("--keep", type=float, metavar="F", help="--video saliency: share of the tokens kept out of "
                      "the early merging (default 0.3)")
    show.add_argument("--early", type=int, metavar="E", help="--video saliency: blocks merging the background "
                      "(default 1)")
    show.add_argument("--background-r", type=int, metavar="R", help="--video saliency: background tokens merged in "
                      "each early block (default: 0.73 of them)")
    show.add_argument("--out", default="merged.png", help="PNG to write")
    show.add_argument("--index", type=int, default=0, help="which example input to draw")
    show.set_defaults(func=run_show)
    from prunekit.cli.recover import add_train_args
    dyn = tsub.add_parser("dynamic", help="train DynamicViT token pruning on a ViT and save it")
    dyn.add_argument("model", help="zoo name, timm:<name> or saved model path (a timm ViT with a class token)")
    dyn.add_argument("--keep", type=float, default=0.7, help="share of the patch tokens kept at each stage")
    dyn.add_argument("--stages", default="3,6,9", help="blocks before which tokens are pruned (comma list)")
    dyn.add_argument("--fit-epochs", type=float, required=True, help="training epochs over --data")
    dyn.add_argument("--backbone-lr", type=float, default=1e-5, help="the backbone's learning rate (0 freezes it)")
    dyn.add_argument("--sampling", choices=("gumbel", "topk"), default="gumbel",
                     help="training-time keep decisions: gumbel (the paper: each token on its own, plus the "
                          "keep-ratio loss) or topk (Gumbel-top-k: exactly the tokens inference keeps)")
    add_train_args(dyn, "training data: imagefolder:DIR or a zoo name (default: the zoo model's own)")
    add_measure_args(dyn)
    dyn.add_argument("--out", required=True, help="where to save the model (.safetensors)")
    dyn.set_defaults(func=run_dynamic)


def run_show(args) -> int:
    import torch

    from prunekit.errors import PruningError
    from prunekit.tokens.show import draw_merges, merge_groups

    saliency_flags = [f for f, v in (("--keep", args.keep), ("--early", args.early),
                                     ("--background-r", args.background_r)) if v is not None]
    if saliency_flags and args.video is None:
        raise PruningError(saliency_flags[0], "show tokens", "it is for saliency-aware merging; add --video saliency")
    if args.r is None and args.video is None:
        raise PruningError("tokens show", "show tokens", "give --r R (tokens merged per layer), or --video saliency")
    check_range("--r", args.r, 0, float("inf"), command="tokens show")
    check_range("--keep", args.keep, 0, 1, hi_open=True, command="tokens show")
    check_range("--early", args.early, 1, float("inf"), command="tokens show")
    check_range("--background-r", args.background_r, 0, float("inf"), command="tokens show")
    if args.video:
        return _show_video(args)
    wl = resolve_model(args.model)
    inputs = wl.example_inputs
    x = inputs.get("pixel_values") if isinstance(inputs, dict) else inputs[0]
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise SystemExit(f"{args.model}: tokens show needs an image model (inputs of shape B, C, H, W)")
    image = x[args.index]
    labels = merge_groups(wl.model, image, args.r)
    boxes = detection_boxes(wl, args.index, image, args.r) if wl.task == "detection" else None
    path = draw_merges(image, labels, args.out, title=f"{wl.name}, r={args.r}", boxes=boxes)
    print(f"wrote {path}: {labels.numel()} patches -> {int(labels.unique().numel())} tokens")
    return 0


def detection_boxes(wl, index: int, image, r: int, min_score: float = 0.3) -> dict:
    """Ground-truth boxes of a zoo detector's example ``index`` and the merged model's predictions (score
    at least ``min_score``), for ``tokens show``."""
    import torch

    from prunekit.data.detection import det_targets
    from prunekit.tokens import merge, unpatch
    from prunekit.zoo.detvit import decode
    from prunekit.zoo.registry import EXAMPLE_BATCH, _eval_data
    _, boxes, classes, ignore = _eval_data(wl.name, EXAMPLE_BATCH)   # the example batch image came from
    truth = det_targets(boxes[index:index + 1], classes[index:index + 1], ignore[index:index + 1])[0]["boxes"]
    try:
        merge(wl.model, r)
        with torch.no_grad():
            found = decode(wl.model(image[None]))[0]
    finally:
        unpatch(wl.model)
    return {"truth": truth, "predicted": found["boxes"][found["scores"] >= min_score]}


def _show_video(args) -> int:
    import torch

    from prunekit.tokens.show import draw_video_saliency, video_saliency
    wl = resolve_model(args.model)
    inputs = wl.example_inputs
    x = inputs[0] if isinstance(inputs, (tuple, list)) else None
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        raise SystemExit(f"{args.model}: tokens show --video needs a video model (inputs of shape B, C, T, H, W)")
    clip = x[args.index]
    shown = video_saliency(wl.model, clip, r=args.r or 0, keep=args.keep, early=args.early,
                           background_r=args.background_r)
    path = draw_video_saliency(clip, shown, args.out, title=f"{wl.name}: saliency-aware merging")
    print(f"wrote {path}: {int(shown.kept.sum())} of {shown.kept.numel()} tokens kept out of the early merging, "
          f"{int(shown.unmerged.sum())} unmerged after the last block")
    return 0


def run_dynamic(args) -> int:
    import prunekit
    from prunekit.cli.recover import _checkpoint_dir, _loader, check_args, load_data
    from prunekit.measure import profile
    from prunekit.tokens import DynamicViT
    from prunekit.train import fit_dynamic
    check_range("--keep", args.keep, 0, 1, lo_open=True, hi_open=True, command="tokens dynamic")
    check_range("--fit-epochs", args.fit_epochs, 0, float("inf"), lo_open=True, command="tokens dynamic")
    check_out(args.out, "tokens dynamic")
    check_args(args, args.fit_epochs, "tokens dynamic")  # batch, lr, data specs, --resume with no checkpoint
    stages = tuple(int(s) for s in args.stages.split(",") if s.strip())
    wl = resolve_model(args.model)
    zoo = (getattr(wl.model, "prunekit_meta", None) or {}).get("zoo") or (wl.name if wl.metric_key else None)
    data = load_data(args, wl.model, zoo)
    dyn = DynamicViT(copy.deepcopy(wl.model), stages=stages, keep=args.keep,
                     sampling=args.sampling)  # refuses a model it cannot prune
    evaluate = lambda m: wl.evaluate(m, limit=args.limit)
    dense = profile(wl.model, wl.example_inputs, evaluate, repeats=1, warmup=0)
    train = data.train if data.steps_per_epoch else _loader(data.train, args.batch, True, args.workers, True)
    history = fit_dynamic(dyn, train, epochs=args.fit_epochs, lr=args.lr or 1e-3, backbone_lr=args.backbone_lr,
                          teacher=wl.model, steps_per_epoch=data.steps_per_epoch, batch=args.batch, seed=args.seed,
                          optimizer=args.optimizer, checkpoint_dir=_checkpoint_dir(args), resume=args.resume,
                          **({} if args.weight_decay is None else {"weight_decay": args.weight_decay}))
    result = measured(dataclasses.replace(wl, model=dyn), wl.model, dense, "tokens dynamic", evaluate, args)
    info = {"keep": args.keep, "stages": list(stages), "sampling": args.sampling, "fit_epochs": args.fit_epochs,
            "steps": len(history),
            "lr": args.lr or 1e-3, "backbone_lr": args.backbone_lr, "data": data.info,
            "last_loss": {k: round(float(v), 4) for k, v in history[-1].items()} if history else {},
            # the share of patch tokens kept after each stage, over the last 50 steps, against its target
            "kept_per_stage": [round(sum(h[f"kept{i + 1}"] for h in history[-50:]) / max(1, len(history[-50:])), 4)
                               for i in range(len(stages))] if history else [],
            "kept_targets": [round(t, 4) for t in dyn.keep_targets()]}
    result["dynamic"] = info
    prunekit.save(dyn, args.out, meta={**origin_meta(wl), "dynamic": info})
    result["out"] = args.out
    print_result(result, args.json)
    return 0
