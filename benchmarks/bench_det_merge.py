"""Token merging for detection: local-then-global merging against ToMe on mosaic-det, at equal MACs.

mosaic-det is a ViT encoder (196 tokens) with a ViTDet-style neck and a CenterNet head
(:mod:`prunekit.zoo.detvit`). Merged tokens are restored to the full 14 x 14 grid before the neck, so
the neck and head run unchanged; merging only cuts the encoder (about 72% of the dense MACs).
For each target MAC fraction every method gets the smallest global ``r`` whose MACs per image are at
most that fraction of dense, no retraining anywhere:

- ``tome``: ToMe, constant r per block; ``tome-dec``: ToMe, linearly decreasing 2r -> 0;
- ``local wW + dec``: :func:`prunekit.tokens.merge_dense`, W of the 49 2x2 windows merged after
  block 0's attention, then decreasing global ToMe 2r -> 0 over blocks 1-7.

Metric: COCO box mAP through pycocotools (:func:`prunekit.zoo.registry.score_map`) on the first
``--limit`` test mosaics: mAP@[.5:.95], mAP@.5, and mAP for small, medium and large objects, where
merging should hurt the small ones most. The size split is the zoo's
(:data:`prunekit.zoo.registry.DET_AREA_BOUNDS`): box areas under 22² and 35² px², the thirds of the
log-uniform 14-56 px item sides. Latency: one
batch of ``--batch`` test mosaics on 1 thread, each configuration in alternating rounds with the dense
model (``bench_tome_timing.paired_rounds``).

    python benchmarks/bench_det_merge.py [--limit 2000] [--batch 32]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
from bench_local_merge import patcher, solve
from bench_tome_timing import paired_note, paired_rounds
from common import write_result

import prunekit.tokens as tokens
from prunekit.measure import count_macs
from prunekit.zoo import load
from prunekit.zoo.registry import _eval_data, score_map

NAME = "det_merge"
MODEL = "mosaic-det"
TARGETS = [0.8, 0.7, 0.6, 0.5]
WINDOWS = [10, 20, 30]
COLUMNS = ["target MACs", "method", "global r", "MACs ratio", "mAP", "change (pts)", "mAP@.5", "mAP@.5 change",
           "mAP small", "small change", "mAP medium", "mAP large", "cpu_ms/batch", "throughput ratio (cpu)"]


def configs_for(model: torch.nn.Module, x1: torch.Tensor, dense_macs: int) -> dict[str, dict]:
    """Every (target, method) of the table with its solved r; a setting reached twice is measured once."""
    configs = {"dense": dict(target=1.0, label="dense", method="dense", count=0, r=0)}
    for target in TARGETS:
        for method, count in [("tome", 0), ("tome-dec", 0)] + [("local", w) for w in WINDOWS]:
            r = solve(MODEL, model, x1, dense_macs, method, count, target)
            if any((c["method"], c["count"], c["r"]) == (method, count, r) for c in configs.values()):
                continue
            label = f"local w{count} + dec" if method == "local" else method
            configs[f"{target}:{label}"] = dict(target=target, label=label, method=method, count=count, r=r)
    return configs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # out-of-reach targets show in the MACs column
    torch.set_num_threads(2)
    wl = load(MODEL)
    model = wl.model.eval()
    data = _eval_data(MODEL, args.limit)
    x1 = wl.example_inputs[0][:1]
    from prunekit.data import normalize
    xb = normalize(data[0][:args.batch])
    dense_macs = count_macs(model, (x1,))
    configs = configs_for(model, x1, dense_macs)
    patch = {k: patcher(MODEL, c["method"], c["count"], c["r"]) for k, c in configs.items()}
    res, t0 = {}, time.time()
    for key in configs:
        patch[key](model)
        res[key] = {"macs": count_macs(model, (x1,)), **score_map(model, data)}
        print(f"[{time.time() - t0:.0f}s] {key} r={configs[key]['r']}: {res[key]}", flush=True)
    tokens.unpatch(model)
    torch.set_num_threads(1)
    timing = paired_rounds(model, (xb,), {k: (lambda k=k: patch[k](model)) for k in configs if k != "dense"},
                           lambda: tokens.unpatch(model), args.rounds, args.repeats)
    tokens.unpatch(model)
    d = res["dense"]
    rows = []
    for key, c in configs.items():
        v, t = res[key], timing.get(key)
        change = {k: round(100 * (v[k] - d[k]), 2) for k in ("map", "map50", "map_small")}
        rows.append([c["target"], c["label"], c["r"], round(v["macs"] / dense_macs, 4),
                     v["map"], change["map"], v["map50"], change["map50"], v["map_small"], change["map_small"],
                     v["map_medium"], v["map_large"],
                     round(t["median_cpu_ms"], 1) if t else None, round(t["ratio_cpu"], 3) if t else 1.0])
    write_result(NAME, "Detection (mosaic-det): local-then-global merging vs ToMe at equal MACs (no retraining)",
                 COLUMNS, rows,
                 notes=f"COCO box mAP (pycocotools) on the first {args.limit} test mosaics; small/medium/large: box "
                       "area under 22² px², under 35² px², above (thirds of the log-uniform 14-56 px item sides on "
                       "the 112 px canvas). Merged tokens are restored to the 14x14 grid before "
                       "the neck. Each method's global r is the smallest with MACs <= the target fraction of dense "
                       f"(decreasing schedules: r is the mean). {paired_note(args.batch, args.rounds, args.repeats)} "
                       "Evaluation ran on 2 threads.",
                 setup={"batch_size": args.batch, "threads": 1, "eval_subset": args.limit})


if __name__ == "__main__":
    main()
