"""Token merging (ToMe, no retraining) on the zoo's video and segmentation models: metric vs MACs and speed.

motion-vivit (8 blocks, 196 space-time tubelet tokens + class token, top-1 on 8-frame clips) and
mosaic-segvit (8 blocks, 196 patch tokens + class token, per-pixel mIoU: the merged tokens are
un-merged to one per patch before the decoder; its pixel-refinement head works at full resolution and
is not reduced by merging). This is plain ToMe; the video-specific and dense-prediction-specific
merging are compared with it in bench_local_merge.py. Metric on the first ``--limit`` eval samples; MACs per
sample from torch.utils.flop_counter; latency of one batch of ``--batch`` eval samples on 1 thread,
each configuration timed in alternating rounds with the dense model (``bench_tome_timing``).

    python benchmarks/bench_tome_zoo.py [--models motion-vivit mosaic-segvit] [--limit 1000]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_tome_fmnist_vit import apply, schedule
from bench_tome_timing import paired_rounds
from common import write_result

from prunekit.measure import count_macs
from prunekit.zoo import load

NAME = "tome_zoo"
COLUMNS = ["model", "method", "r", "tokens (last block)", "MACs/sample", "MACs ratio", "metric", "change (pts)",
           "cpu_ms/batch", "throughput ratio (cpu)", "throughput ratio (wall)"]


def bench_model(name: str, rs: list[int], dec_rs: list[int], limit: int, batch: int, rounds: int,
                repeats: int) -> list[list]:
    wl = load(name)
    model, key = wl.model, wl.metric_key
    x = torch.cat([wl.example_inputs[0]] * -(-batch // wl.example_inputs[0].shape[0]))[:batch]
    vit = getattr(model, "encoder", model)  # SegViT wraps its timm encoder
    depth, prefix = len(vit.blocks), int(vit.num_prefix_tokens)
    n0 = vit.patch_embed.num_patches + prefix
    configs = [("dense", 0)] + [("tome", r) for r in rs] + [("tome-dec", r) for r in dec_rs]
    res, t0 = {}, time.time()
    for method, r in configs:
        apply(model, method, r)
        macs = count_macs(model, (x[:1],))
        metric = wl.evaluate(model, limit=limit)[key]
        last = n0 - sum(schedule(method, r).per_layer(depth, n0, prefix)) if r else n0
        res[(method, r)] = {"macs": macs, "metric": metric, "tokens_last": last}
        print(f"[{time.time() - t0:.0f}s] {name} {method} r={r}: {key}={metric} macs={macs} last={last}", flush=True)
    apply(model, "dense", 0)
    timing = paired_rounds(model, (x,), {f"{m}:{r}": (lambda m=m, r=r: apply(model, m, r)) for m, r in configs[1:]},
                           lambda: apply(model, "dense", 0), rounds, repeats)
    apply(model, "dense", 0)
    dense = res[("dense", 0)]
    rows = []
    for (method, r), v in res.items():
        t = timing.get(f"{method}:{r}")
        cpu_ms = t["median_cpu_ms"] if t else statistics.median(c for tt in timing.values() for c in tt["dense_cpu_ms"])
        rows.append([name, method, r, v["tokens_last"], v["macs"], round(v["macs"] / dense["macs"], 4),
                     round(v["metric"], 4), round(100 * (v["metric"] - dense["metric"]), 2), round(cpu_ms, 1),
                     round(t["ratio_cpu"], 3) if t else 1.0, round(t["ratio_wall"], 3) if t else 1.0])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["motion-vivit", "mosaic-segvit"])
    ap.add_argument("--rs", type=int, nargs="+", default=[4, 8, 12, 16, 20])
    ap.add_argument("--dec-rs", type=int, nargs="*", default=[12, 20])
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [row for name in args.models
            for row in bench_model(name, args.rs, args.dec_rs, args.limit, args.batch, args.rounds, args.repeats)]
    write_result(NAME, "ToMe on the video and segmentation zoo models: metric vs MACs and throughput (no retraining)",
                 COLUMNS, rows,
                 notes=f"metric: motion-vivit top-1, mosaic-segvit mIoU, on the first {args.limit} eval samples. "
                       "'tome' = constant r merges per block, 'tome-dec' = linearly decreasing 2r -> 0 (same total). "
                       f"Latency: batch {args.batch}, 1 thread, {args.rounds} rounds x {args.repeats} forwards, each "
                       "config paired with a dense run; throughput ratio = median of per-round dense/merged ratios "
                       "in process CPU time and in wall clock; the dense row's cpu_ms: the median of its paired runs.",
                 setup={"batch_size": args.batch, "threads": 1, "eval_subset": args.limit})


if __name__ == "__main__":
    main()
