"""Saliency-aware video merging against time tubes and plain space-time ToMe, at equal MACs, still and moving camera.

Two workloads, each evaluated on its own eval split, no retraining anywhere:

- ``motion-vivit``: clips over a still textured background (a location's tokens repeat over time);
- ``motion-vivit-pan``: the same garments under camera motion (pan up to 1.5 px/frame, up to 8% zoom,
  1 px shake: :func:`prunekit.data.load_motion` with ``camera=True``), with its own model.

MAC levels are those of ``tubes 30 + r`` (:func:`prunekit.tokens.merge_video`, 30 of the 49 locations'
4-slice time tubes merged in block 0, then constant global r) for each ``--levels`` r; at each level
every other method gets the smallest global r whose MACs per clip are at most the level's (so it
never has more compute than the tubes row):

- ``saliency``: ``merge_video(method="saliency")`` with its defaults: block 0's attention (every 8th
  query) scores the tokens (vid-TLDR, Choi et al., CVPR 2024), the 30% most salient are kept out, 0.73
  of the others (100 of 137) are merged in block 0 by rounds of bipartite matching, then constant global
  r. The defaults were chosen on 1,000 *training* clips of each model (seed 123), not on the eval clips;
- ``saliency (keep 0.3, half)``: the earlier defaults, kept out 30% and merged half of the background;
- ``tome``: plain ToMe over all space-time tokens, constant r.

Top-1 on the first ``--limit`` eval clips (0: all 2000). ``vs tubes`` is the paired difference to the
tubes row of the same level on the same clips, with its standard error (``se``: the spread of the
per-clip differences / sqrt(n)), so a gap smaller than about two ``se`` is within the noise of the
split. Throughput: one batch of ``--batch`` clips on 1 thread, each configuration timed in
alternating rounds against the dense model (``bench_tome_timing.paired_rounds``; ratio = median of
per-round dense/merged process-CPU-time ratios).

    python benchmarks/bench_video_saliency.py [--models motion-vivit motion-vivit-pan] [--limit 0] [--levels 8 12 16]
"""
from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable

import torch
from bench_tome_timing import paired_rounds
from common import write_result

import prunekit.tokens as tokens
from prunekit.data import normalize
from prunekit.measure import count_macs
from prunekit.tokens.saliency import SaliencyMerge
from prunekit.tokens.schedule import solve_for_macs
from prunekit.zoo import load
from prunekit.zoo.registry import _eval_data

NAME = "video_saliency"
COLUMNS = ["model", "level", "method", "global r", "MACs ratio", "top-1", "change (pts)", "vs tubes (pts)",
           "se vs tubes (pts)", "cpu_ms/batch", "throughput ratio (cpu)"]
METHODS = ("saliency", "saliency (keep 0.3, half)", "tome")


def patcher(method: str, r: int) -> Callable[[torch.nn.Module], None]:
    """The patch of ``method`` with global ``r``."""
    def apply(model: torch.nn.Module) -> None:
        tokens.unpatch(model)
        if method == "tubes 30":
            tokens.merge_video(model, tubes=30, r=r)
        elif method == "saliency":
            tokens.merge_video(model, method="saliency", r=r)
        elif method == "saliency (keep 0.3, half)":
            tokens.merge(model, r, saliency=SaliencyMerge(keep=0.3, background_r=68, query_stride=4))
        elif method == "tome":
            tokens.merge(model, r=r)
    return apply


@torch.inference_mode()
def correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-clip correctness (float 0/1)."""
    out = torch.cat([model(normalize(x[i:i + 100])).argmax(1) for i in range(0, x.shape[0], 100)])
    return (out == y).float()


def paired(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """The mean of ``a - b`` and its standard error, in points."""
    d = a - b
    return 100 * float(d.mean()), 100 * float(d.std()) / math.sqrt(d.numel())


def bench_model(name: str, args: argparse.Namespace) -> tuple[list[list], dict]:
    wl = load(name)
    model = wl.model.eval()
    x1 = wl.example_inputs[0][:1]
    xb = torch.cat([wl.example_inputs[0]] * -(-args.batch // wl.example_inputs[0].shape[0]))[:args.batch]
    clips = _eval_data(name, args.limit or None)
    dense_macs = count_macs(model, (x1,))
    configs = {"dense": dict(level="dense", method="dense", r=0)}
    for level_r in args.levels:
        patcher("tubes 30", level_r)(model)
        level = count_macs(model, (x1,)) / dense_macs
        label = f"tubes 30 + r {level_r}"
        configs[f"{label}:tubes 30"] = dict(level=label, method="tubes 30", r=level_r)
        for method in METHODS:
            def macs_of(schedule, method=method) -> int:
                patcher(method, schedule.r)(model)
                return count_macs(model, (x1,))
            r = solve_for_macs(macs_of, dense_macs, level, 98).r
            configs[f"{label}:{method}"] = dict(level=label, method=method, r=r)
    tokens.unpatch(model)
    patch = {key: patcher(c["method"], c["r"]) for key, c in configs.items()}
    res, hits, t0 = {}, {}, time.time()
    for key in configs:
        patch[key](model)
        hits[key] = correct(model, *clips)
        res[key] = {"macs": count_macs(model, (x1,)), "top1": float(hits[key].mean())}
        print(f"[{time.time() - t0:.0f}s] {name} {key} r={configs[key]['r']}: {res[key]}", flush=True)
    tokens.unpatch(model)
    timing = paired_rounds(model, (xb,), {k: (lambda k=k: patch[k](model)) for k in configs if k != "dense"},
                           lambda: tokens.unpatch(model), args.rounds, args.repeats)
    tokens.unpatch(model)
    torch.set_num_threads(args.threads)
    rows = []
    for key, c in configs.items():
        v, t = res[key], timing.get(key)
        tubes = f"{c['level']}:tubes 30"
        diff, se = paired(hits[key], hits[tubes]) if tubes in hits else (None, None)
        rows.append([name, c["level"], c["method"], c["r"], round(v["macs"] / dense_macs, 4), round(v["top1"], 4),
                     round(100 * (v["top1"] - res["dense"]["top1"]), 2),
                     round(diff, 2) if diff is not None else None, round(se, 2) if se is not None else None,
                     round(t["median_cpu_ms"], 1) if t else None, round(t["ratio_cpu"], 3) if t else 1.0])
    return rows, {"configs": configs, "results": res, "clips": int(clips[0].shape[0]),
                  "timing": {k: dict(t) for k, t in timing.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["motion-vivit", "motion-vivit-pan"])
    ap.add_argument("--limit", type=int, default=0, help="eval clips per model (0: the whole split)")
    ap.add_argument("--levels", type=int, nargs="+", default=[8, 12, 16], help="r after 30 tubes, one per MAC level")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads for the evaluation (timing always uses 1)")
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    torch.set_num_threads(args.threads)
    rows, raw = [], {}
    for name in args.models:
        got, raw[name] = bench_model(name, args)
        rows += got
    clips = ", ".join(f"{name} {raw[name]['clips']}" for name in args.models)
    write_result(NAME, "Saliency-aware video merging vs time tubes vs ToMe at equal MACs, still and moving camera "
                       "(no retraining)", COLUMNS, rows,
                 notes=f"top-1 on each model's own eval clips ({clips}): motion-vivit on still-camera clips, "
                       "motion-vivit-pan on camera-motion clips (pan, slight zoom, shake; load_motion(camera=True)). "
                       "Levels: the MACs of 30 time tubes merged in block 0 then constant r; every other method's r "
                       "is the smallest with MACs <= that level. saliency: merge_video(method='saliency') with its "
                       "defaults (keep 0.3, 0.73 of the background = 100 of 137 tokens merged in block 0, saliency "
                       "from every 8th query; chosen on 1000 training clips of each model); "
                       "saliency (keep 0.3, half): the earlier defaults (68 of 137 merged in block 0, every 4th "
                       "query). Its MACs include scoring the tokens (the block-0 attention map over those queries). "
                       "'vs tubes': the paired top-1 difference "
                       "to the tubes row of the same level on the same clips; 'se': its standard error. "
                       f"Throughput: batch {args.batch}, 1 thread, {args.rounds} rounds x {args.repeats} forwards, "
                       "each config paired with a dense run; ratio = median of per-round dense/merged CPU-time "
                       f"ratios. Evaluation on {args.threads} thread(s).",
                 setup={"batch_size": args.batch, "threads": 1, "eval_subset": args.limit or "all",
                        "eval_threads": args.threads},
                 raw=raw)


if __name__ == "__main__":
    main()
