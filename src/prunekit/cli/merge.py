"""``prunekit merge NAME --r R | --target-macs F [--windows W | --tubes T | --video saliency ...] [--out PATH]
[--json]``: token merging (ToMe, Bolya et al., ICLR 2023) applied off the shelf, measured against the dense model in
the ``prunekit profile --json`` shape. ``--windows``: local-then-global merging for dense prediction
(:func:`prunekit.tokens.merge_dense`); ``--tubes T`` (or ``--video tubes --tubes T``): time-tube merging
for video; ``--video saliency [--keep F] [--early E] [--background-r R]``: saliency-aware video merging
(vid-TLDR, Choi et al., CVPR 2024: the background found from block 0's attention is merged first, the
most salient tokens kept out; :func:`prunekit.tokens.merge_video`); ``--r`` / ``--target-macs`` then set
the global merging after the early stage.
``--out`` saves the merged model with :func:`prunekit.save`: the patch (its schedule and local stage)
is part of the saved module tree, so :func:`prunekit.load` gives back a model that merges the same
way; the configuration is also recorded in the file's meta under ``merge``."""
from __future__ import annotations

import copy
import sys

from prunekit.cli.common import (
    add_measure_args,
    check_out,
    check_range,
    measured,
    origin_meta,
    print_result,
    resolve_model,
)
from prunekit.measure import profile
from prunekit.tokens.video import METHODS


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge tokens in a transformer (ToMe) and measure it against dense")
    p.add_argument("model", help="zoo name, timm:<name>, hf:<dir>, a save_pretrained directory or a saved model path")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--r", type=int, help="tokens merged per layer (constant)")
    how.add_argument("--target-macs", type=float, metavar="F",
                     help="fraction of the dense MACs to keep (e.g. 0.62); r is solved for")
    local = p.add_mutually_exclusive_group()
    local.add_argument("--windows", type=int, metavar="W",
                       help="first merge the W most alike 2x2 windows of patch tokens (segmentation, detection)")
    local.add_argument("--tubes", type=int, metavar="T",
                       help="first merge the T most alike time tubes of a video model's tokens (static background)")
    p.add_argument("--video", choices=METHODS, default=None,
                   help="video merging: 'tubes' merges the --tubes T most alike time tubes (a static background); "
                   "'saliency' merges the background found from the first block's attention, the --keep share of "
                   "most salient tokens kept out, for --early blocks, --background-r tokens per block; --r / "
                   "--target-macs set the merging in the blocks after")
    p.add_argument("--keep", type=float, metavar="F",
                   help="--video saliency: share of the tokens kept out of the early merging (default 0.3)")
    p.add_argument("--early", type=int, metavar="E", help="--video saliency: blocks merging the background (default 1)")
    p.add_argument("--background-r", type=int, metavar="R",
                   help="--video saliency: background tokens merged in each early block, in rounds of bipartite "
                   "matching (default: 0.73 of them)")
    p.add_argument("--reducer", choices=("merge", "evit", "drop"), default="merge",
                   help="merge: ToMe (default); evit: keep the most attended tokens and fuse the rest into one "
                   "(EViT); drop: keep the most attended tokens only")
    p.add_argument("--no-prop-attn", action="store_true", help="disable proportional attention")
    p.add_argument("--out", default=None, help="save the merged model here (.safetensors); load re-applies the merge")
    add_measure_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from prunekit.errors import PruningError
    from prunekit.tokens import last_info, merge, merge_dense, merge_video, schedule_of
    check_range("--r", args.r, 0, float("inf"), command="merge")
    check_range("--target-macs", args.target_macs, 0, 1, lo_open=True, command="merge")
    check_out(args.out, "merge")
    if args.reducer != "merge" and (args.windows is not None or args.tubes is not None or args.video):
        raise PruningError(f"--reducer {args.reducer}", "merge", "--windows, --tubes and --video merge alike "
                           "tokens; use them with --reducer merge")
    video = check_video(args)
    wl = resolve_model(args.model)
    evaluate = lambda m: wl.evaluate(m, limit=args.limit)
    kwargs = dict(r=args.r if args.r is not None else 0, prop_attn=not args.no_prop_attn,
                  target_macs=args.target_macs, example_inputs=wl.example_inputs, trace_source=True)
    if args.windows is not None:
        apply = lambda m: merge_dense(m, windows=args.windows, **kwargs)
    elif video == "saliency":
        apply = lambda m: merge_video(m, method="saliency", keep=args.keep, early=args.early,
                                      background_r=args.background_r, **kwargs)
    elif args.tubes is not None:
        apply = lambda m: merge_video(m, tubes=args.tubes, **kwargs)
    elif args.reducer == "merge":
        apply = lambda m: merge(m, **kwargs)
    else:   # EViT and top-k drop run without proportional attention, as in their papers
        reducer = "fuse" if args.reducer == "evit" else "drop"
        apply = lambda m: merge(m, **{**kwargs, "prop_attn": False}, reducer=reducer)
    dense = profile(wl.model, wl.example_inputs, evaluate, repeats=1, warmup=0)
    dense_model = copy.deepcopy(wl.model)
    try:
        apply(wl.model)
    except (PruningError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = measured(wl, dense_model, dense, "merge", evaluate, args)
    schedule = schedule_of(wl.model)
    result["tome"] = {"r": getattr(schedule, "r", None), "schedule": repr(schedule),
                      "prop_attn": not args.no_prop_attn and args.reducer == "merge", "reducer": args.reducer,
                      "target_macs": args.target_macs,
                      "windows": args.windows, "tubes": args.tubes, "video": video}
    if video == "saliency":
        from prunekit.tokens.saliency import SaliencyMerge
        default = SaliencyMerge()
        result["tome"].update(keep=default.keep if args.keep is None else args.keep,
                              early=default.early if args.early is None else args.early,
                              background_r=args.background_r)
    info = last_info(wl.model)  # what the last measured forward really merged, layer by layer
    if info is not None:
        result["tome"]["r_per_layer"] = list(info.r)
        result["tome"]["tokens_per_layer"] = list(info.tokens)
        if args.r is not None and args.windows is None and video is None and any(r < args.r for r in info.r):
            result["tome"]["clamped"] = True
            print(f"prunekit merge: --r {args.r} is more than some layers can merge (at most half of the tokens "
                  f"they see); merged per layer: {list(info.r)}", file=sys.stderr)
    if args.out:
        import prunekit
        config = {k: v for k, v in result["tome"].items() if k not in ("r_per_layer", "tokens_per_layer")}
        prunekit.save(wl.model, args.out, meta={**origin_meta(wl), "merge": config})
        result["out"] = args.out
    print_result(result, args.json)
    return 0


def check_video(args) -> str | None:
    """The video method the flags ask for (``None``: none), or one line refusing a combination that makes no
    sense; checked before any model is built."""
    from prunekit.errors import PruningError
    video = args.video or ("tubes" if args.tubes is not None else None)
    saliency_flags = [f for f, v in (("--keep", args.keep), ("--early", args.early),
                                     ("--background-r", args.background_r)) if v is not None]
    if saliency_flags and video != "saliency":
        raise PruningError(saliency_flags[0], "merge", "it is for saliency-aware merging; add --video saliency")
    if video is not None and args.windows is not None:
        raise PruningError(f"--windows with --{'tubes' if args.video is None else 'video'}", "merge",
                           "windows are for image models, tubes and saliency for video; choose one")
    if video == "saliency" and args.tubes is not None:
        raise PruningError("--video saliency with --tubes", "merge", "--tubes sets time-tube merging; use --video "
                           "tubes --tubes T, or leave --tubes out")
    if video == "tubes" and args.tubes is None:
        raise PruningError("--video tubes", "merge", "it needs --tubes T (how many time tubes to merge)")
    check_range("--keep", args.keep, 0, 1, hi_open=True, command="merge")
    check_range("--early", args.early, 1, float("inf"), command="merge")
    check_range("--background-r", args.background_r, 0, float("inf"), command="merge")
    return video
