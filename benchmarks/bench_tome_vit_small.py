"""Token merging speed on timm vit_small_patch16_224 (random weights): throughput vs unpatched.

For r = 0, 8, 13, 16 (ToMe's published ViT-S points) the patched model is timed against the
unpatched model in alternating rounds in the same process (see bench_tome_timing.py: wall clock and
process CPU time, one thread); MACs from torch.utils.flop_counter. r = 0 checks that the patch itself
costs nothing (fused SDPA kept, no mask when nothing is merged).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tome_vit_small.py [--batch 8]
"""
from __future__ import annotations

import argparse

import timm
import torch
from bench_tome_timing import paired_rounds
from common import write_result

import prunekit.tokens as tokens
from prunekit.measure import count_macs

NAME = "tome_vit_small"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rs", type=int, nargs="+", default=[0, 8, 13, 16])
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    x = torch.randn(args.batch, 3, 224, 224)
    dense_macs = count_macs(model, (x[:1],))
    with torch.no_grad():
        dense_out = model(x)
    macs, diffs = {}, {}
    for r in args.rs:
        tokens.merge(model, r=r)
        macs[r] = count_macs(model, (x[:1],))
        with torch.no_grad():
            diffs[r] = float((model(x) - dense_out).abs().max())
    tokens.unpatch(model)
    configs = {f"r={r}": (lambda r=r: tokens.merge(model, r=r)) for r in args.rs}
    res = paired_rounds(model, (x,), configs, lambda: tokens.unpatch(model), args.rounds, args.repeats)
    dense_cpu = sum(sum(v["dense_cpu_ms"]) for v in res.values()) / sum(len(v["dense_cpu_ms"]) for v in res.values())
    rows = [["unpatched", "-", dense_macs, 1.0, round(dense_cpu, 1), round(1000 * args.batch / dense_cpu, 2), 1.0,
             1.0, 0.0]]
    for r in args.rs:
        v = res[f"r={r}"]
        rows.append([f"ToMe r={r}", r, macs[r], round(macs[r] / dense_macs, 4), round(v["median_cpu_ms"], 1),
                     round(1000 * args.batch / v["median_cpu_ms"], 2), round(v["ratio_cpu"], 3),
                     round(v["ratio_wall"], 3), round(diffs[r], 6)])
    notes = (f"vit_small_patch16_224, random weights (speed only), batch {args.batch}, 1 thread, {args.rounds} "
             f"alternating rounds x {args.repeats} timed forwards per config, each paired with a dense run. "
             "Throughput ratio = median over rounds of dense/merged time, in process CPU time (robust to the "
             "shared machine's preemption) and wall clock. latency/images-per-s columns are CPU time. MACs "
             "per image. Published ToMe ViT-S (A100 fp16): r=13 1.64x, r=16 ~1.9x (their throughput).")
    write_result(NAME, "ToMe on timm vit_small_patch16_224: throughput vs unpatched",
                 ["model", "r", "MACs", "MACs ratio", "cpu_ms/batch", "images/s (cpu)", "throughput ratio (cpu)",
                  "throughput ratio (wall)", "max |logit diff| vs dense"], rows, notes,
                 setup={"batch_size": args.batch, "threads": 1, "rounds": args.rounds, "repeats": args.repeats},
                 raw={k: {kk: vv for kk, vv in v.items()} for k, v in res.items()})


if __name__ == "__main__":
    main()
