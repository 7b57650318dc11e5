"""Local-then-global merging (segmentation) and time-tube merging (video) against plain ToMe, at equal MACs.

For each target MAC fraction, every method gets its global ``r`` solved so its MACs per sample are
at most that fraction of the dense model's (the smallest such ``r``), so rows of one target compare
methods at (nearly) the same compute, no retraining anywhere:

- ``tome``: ToMe, constant r per block; ``tome-dec``: ToMe, linearly decreasing 2r -> 0;
- mosaic-segvit, ``local wW + dec``: :func:`prunekit.tokens.merge_dense`, W of the 49 2x2 windows
  merged after block 0's attention, then global ToMe decreasing 2r -> 0 over blocks 1-7 (better than a
  constant r after the local stage on this model); metric mIoU and boundary mIoU (mIoU on the pixels
  within 2 px of a true label change, where merging across an object boundary shows);
- motion-vivit, ``tubes T``: :func:`prunekit.tokens.merge_video`, T of the 49 locations' 4-slice time
  tubes merged in block 0, then constant global r; metric top-1.

Metric on the first ``--limit`` eval samples; MACs per sample from torch.utils.flop_counter; latency
of one batch of ``--batch`` eval samples on 1 thread, each configuration timed in alternating rounds
with the dense model (``bench_tome_timing.paired_rounds``).

    python benchmarks/bench_local_merge.py [--models mosaic-segvit motion-vivit] [--limit 1000]
"""
from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
from bench_tome_timing import paired_rounds
from common import write_result

import prunekit.tokens as tokens
from prunekit.data import normalize
from prunekit.measure import count_macs
from prunekit.tokens.schedule import solve_for_macs
from prunekit.zoo import load
from prunekit.zoo.registry import _eval_data, boundary_miou, miou_of

NAME = "local_merge"
COLUMNS = ["model", "target MACs", "method", "global r", "MACs ratio", "metric", "change (pts)",
           "boundary mIoU", "boundary change (pts)", "cpu_ms/batch", "throughput ratio (cpu)"]
TARGETS = {"mosaic-segvit": [0.75, 0.65, 0.55, 0.45], "motion-vivit": [0.6, 0.45, 0.35, 0.3]}
LOCAL = {"mosaic-segvit": ("local w", [10, 20, 30]), "motion-vivit": ("tubes ", [20, 30, 35])}
SUFFIX = {"mosaic-segvit": " + dec", "motion-vivit": ""}  # the global schedule after the local stage


def patcher(name: str, method: str, count: int, r: int) -> Callable[[torch.nn.Module], None]:
    """The patch of ``method`` (``dense``, ``tome``, ``tome-dec`` or ``local``) for zoo model ``name``."""
    def apply(model: torch.nn.Module) -> None:
        tokens.unpatch(model)
        if method == "tome":
            tokens.merge(model, r=r)
        elif method == "tome-dec":
            tokens.merge(model, r=tokens.decreasing(r))
        elif method == "local" and name.startswith("motion-"):
            tokens.merge_video(model, tubes=count, r=r)
        elif method == "local":  # segmentation and detection: local windows, then decreasing global ToMe
            tokens.merge_dense(model, windows=count, r=tokens.decreasing(r))
    return apply


def solve(name: str, model: torch.nn.Module, x: torch.Tensor, dense_macs: int, method: str, count: int,
          target: float) -> int:
    """The smallest global r whose MACs are at most ``target`` of dense (the largest r when out of reach)."""
    def macs_of(schedule) -> int:
        patcher(name, method, count, schedule.r)(model)
        return count_macs(model, (x,))
    return solve_for_macs(macs_of, dense_macs, target, 98).r


@torch.no_grad()
def scores(name: str, model: torch.nn.Module, limit: int) -> tuple[float, float | None]:
    x, y = _eval_data(name, limit)
    out = torch.cat([model(normalize(x[i:i + 100])).argmax(1) for i in range(0, x.shape[0], 100)])
    if name == "mosaic-segvit":
        return miou_of(out, y), boundary_miou(out, y, 2)
    return float((out == y).float().mean()), None


def bench_model(name: str, limit: int, batch: int, rounds: int, repeats: int) -> list[list]:
    wl = load(name)
    model = wl.model
    x1 = wl.example_inputs[0][:1]
    xb = torch.cat([wl.example_inputs[0]] * -(-batch // wl.example_inputs[0].shape[0]))[:batch]
    dense_macs = count_macs(model, (x1,))
    label, counts = LOCAL[name]
    configs = {"dense": dict(target=1.0, label="dense", method="dense", count=0, r=0)}
    for target in TARGETS[name]:
        for method, count in [("tome", 0), ("tome-dec", 0)] + [("local", c) for c in counts]:
            r = solve(name, model, x1, dense_macs, method, count, target)
            shown = f"{label}{count}{SUFFIX[name]}" if method == "local" else method
            if any((c["method"], c["count"], c["r"]) == (method, count, r) for c in configs.values()):
                continue  # the local stage alone already goes below this target too: measured once
            configs[f"{target}:{shown}"] = dict(target=target, label=shown, method=method, count=count, r=r)
    patch = {key: patcher(name, c["method"], c["count"], c["r"]) for key, c in configs.items()}
    res, t0 = {}, time.time()
    for key in configs:
        patch[key](model)
        res[key] = {"macs": count_macs(model, (x1,)), "scores": scores(name, model, limit)}
        print(f"[{time.time() - t0:.0f}s] {name} {key} r={configs[key]['r']}: {res[key]}", flush=True)
    tokens.unpatch(model)
    timing = paired_rounds(model, (xb,), {k: (lambda k=k: patch[k](model)) for k in configs if k != "dense"},
                           lambda: tokens.unpatch(model), rounds, repeats)
    tokens.unpatch(model)
    dense_metric, dense_edge = res["dense"]["scores"]
    rows = []
    for key, c in configs.items():
        v, t = res[key], timing.get(key)
        metric, edge = v["scores"]
        rows.append([name, c["target"], c["label"], c["r"], round(v["macs"] / dense_macs, 4), round(metric, 4),
                     round(100 * (metric - dense_metric), 2), None if edge is None else round(edge, 4),
                     None if edge is None else round(100 * (edge - dense_edge), 2),
                     round(t["median_cpu_ms"], 1) if t else None, round(t["ratio_cpu"], 3) if t else 1.0])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["mosaic-segvit", "motion-vivit"])
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # out-of-reach targets are visible in the MACs column
    torch.set_num_threads(2)
    rows = [row for name in args.models for row in bench_model(name, args.limit, args.batch, args.rounds,
                                                                args.repeats)]
    write_result(NAME, "Local-then-global (segmentation) and time-tube (video) merging vs ToMe at equal MACs "
                       "(no retraining)", COLUMNS, rows,
                 notes=f"metric: mosaic-segvit mIoU, motion-vivit top-1, on the first {args.limit} eval samples; "
                       "boundary mIoU: mIoU on pixels within 2 px of a true label change. Each method's global r "
                       "is the smallest with MACs <= the target fraction of dense (for decreasing schedules: r, "
                       "the mean). 'local wW + dec': merge_dense, W 2x2 windows merged after block 0, then "
                       "decreasing 2r -> 0; 'tubes T': merge_video, T time tubes (4 tokens each) "
                       f"merged in block 0. Latency: batch {args.batch}, 1 thread, {args.rounds} rounds x "
                       f"{args.repeats} forwards, each config paired with a dense run; throughput ratio = median "
                       "of per-round dense/merged CPU-time ratios. Evaluation ran on 2 threads.",
                 setup={"batch_size": args.batch, "threads": 1, "eval_subset": args.limit})


if __name__ == "__main__":
    main()
