"""Token merging on fmnist-vit (no retraining): accuracy against MACs and throughput, r = 0 .. max, with
a plain top-k token-drop reference (class-token attention) at the same token counts.

fmnist-vit: timm VisionTransformer, 196 patch tokens + class token, 12 blocks, width 96. Top-1 on the
first ``--limit`` Fashion-MNIST test images (a subset: the full split takes too long on the shared
CPU); MACs per image from torch.utils.flop_counter; latency of one batch of 64 test images with the
stated threads, every configuration timed in alternating rounds with the dense model; the
throughput ratio is the median of the per-round dense/reduced latency ratios.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tome_fmnist_vit.py [--limit 2000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from bench_tome_timing import paired_rounds
from common import RESULTS, write_result

import prunekit.tokens as tokens
from prunekit.data import load_fashion_mnist, normalize
from prunekit.measure import count_macs
from prunekit.zoo import load

NAME = "tome_fmnist_vit"


def schedule(method: str, r: int):
    """``tome``/``drop``: constant r per layer; ``*-dec``: ToMe's linearly decreasing 2r -> 0 (same total)."""
    return tokens.decreasing(r) if method.endswith("-dec") else tokens.Constant(r)


def apply(model, method: str, r: int) -> None:
    tokens.unpatch(model)
    if method.startswith("tome"):
        tokens.merge(model, r=schedule(method, r))
    elif method.startswith("drop"):
        tokens.drop(model, r=schedule(method, r))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tome-rs", type=int, nargs="+", default=list(range(0, 17)))
    ap.add_argument("--drop-rs", type=int, nargs="+", default=[4, 8, 10, 11, 12, 13, 14, 15, 16])
    ap.add_argument("--dec-rs", type=int, nargs="*", default=[12, 14, 16],
                    help="decreasing schedules (2r in the first block -> 0), merged and dropped")
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    wl = load("fmnist-vit")
    model = wl.model
    x, _ = load_fashion_mnist("test")
    xb = normalize(x[: args.batch])
    configs = ([("dense", 0)] + [("tome", r) for r in args.tome_rs] + [("drop", r) for r in args.drop_rs]
               + [("tome-dec", r) for r in args.dec_rs] + [("drop-dec", r) for r in args.dec_rs])
    res: dict = {}
    partial = RESULTS / f"{NAME}.partial.json"
    for method, r in configs:
        apply(model, method, r)
        macs = count_macs(model, (xb[:1],))
        acc = wl.evaluate(model, limit=args.limit)["top1"]
        n_last = 197 - sum(schedule(method, r).per_layer(12, 197, 1)) if method != "dense" else 197
        res[(method, r)] = {"macs": macs, "top1": acc, "tokens_last": n_last, "times": []}
        print(f"[{time.time() - t0:.0f}s] {method} r={r}: top1={acc} macs={macs} last={n_last}", flush=True)
        partial.write_text(json.dumps({f"{m}:{rr}": v for (m, rr), v in res.items()}, indent=1))
    tokens.unpatch(model)
    timing = paired_rounds(model, (xb,), {f"{m}:{r}": (lambda m=m, r=r: apply(model, m, r)) for m, r in configs[1:]},
                           lambda: apply(model, "dense", 0), args.rounds, args.repeats)
    tokens.unpatch(model)
    dense = res[("dense", 0)]
    dense_cpu = statistics.median(c for v in timing.values() for c in v["dense_cpu_ms"])
    dense.update(cpu_ms=dense_cpu, throughput_ratio=1.0, throughput_ratio_wall=1.0)
    rows = []
    for (method, r), v in res.items():
        if method != "dense":
            t = timing[f"{method}:{r}"]
            v.update(cpu_ms=t["median_cpu_ms"], throughput_ratio=t["ratio_cpu"], throughput_ratio_wall=t["ratio_wall"],
                     timing=t)
        rows.append([method, r, v["tokens_last"], v["macs"], round(v["macs"] / dense["macs"], 4), v["top1"],
                     round(100 * (v["top1"] - dense["top1"]), 2), round(v["cpu_ms"], 1),
                     round(1000 * args.batch / v["cpu_ms"], 1), round(v["throughput_ratio"], 3),
                     round(v["throughput_ratio_wall"], 3)])
    tome = [(r, v) for (m, r), v in res.items() if m == "tome"]
    band = [(r, v) for r, v in tome if 0.60 <= v["macs"] / dense["macs"] <= 0.65]
    two_x = [(f"{m} {r}", v) for (m, r), v in res.items() if m.startswith("tome") and v["throughput_ratio"] >= 2.0]
    summary = {}
    if band:
        r, v = max(band, key=lambda t: (t[1]["top1"], t[0]))
        summary["operating_point"] = {"r": r, "macs_ratio": round(v["macs"] / dense["macs"], 4),
                                      "drop_pts": round(100 * (dense["top1"] - v["top1"]), 2),
                                      "throughput_ratio": round(v["throughput_ratio"], 3)}
    if two_x:
        r, v = max(two_x, key=lambda t: t[1]["top1"])
        summary["r_for_2x"] = {"r": r, "drop_pts": round(100 * (dense["top1"] - v["top1"]), 2),
                               "throughput_ratio": round(v["throughput_ratio"], 3)}
    notes = (f"fmnist-vit, top-1 on the first {args.limit} of 10k test images (subset), latency: batch "
             f"{args.batch}, 1 thread, {args.rounds} rounds x {args.repeats} forwards, each config paired with "
             "a dense run; throughput ratio = median of per-round dense/reduced ratios in process CPU time "
             "(robust to preemption on this shared CPU) and in wall clock. 'drop' = top-k "
             "by class attention with the same per-layer r (same token counts); '-dec' = linearly decreasing "
             "schedule, 2r in block 1 down to 0 in block 12 (same total merges as constant r). Summary: "
             + json.dumps(summary))
    write_result(NAME, "ToMe on fmnist-vit: accuracy vs MACs and throughput (no retraining), top-k drop reference",
                 ["method", "r", "tokens (last block)", "MACs/img", "MACs ratio", "top1", "drop (pts)",
                  "cpu_ms/batch", "img/s (cpu)", "throughput ratio (cpu)", "throughput ratio (wall)"], rows, notes,
                 setup={"batch_size": args.batch, "threads": 1, "eval_subset": args.limit},
                 raw={"summary": summary, "configs": {f"{m}:{r}": v for (m, r), v in res.items()}})
    partial.unlink(missing_ok=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
