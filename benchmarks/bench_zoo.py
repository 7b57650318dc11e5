"""Dense reference models: params, MACs, latency (batch 64) and task metric on the full eval split.

Usage: python benchmarks/bench_zoo.py [--threads 2] [--batch 64] [--limit N]
"""
from __future__ import annotations

import argparse

import torch
from common import write_result

from prunekit.measure import profile
from prunekit.zoo import NAMES, load, read_manifest


def batch_of(wl, n: int):
    """The workload's example inputs repeated/cut to ``n`` samples (same content, larger batch)."""
    if isinstance(wl.example_inputs, dict):
        return wl.example_inputs  # text: the fixed batch of 32 mixed-length sentences
    x = wl.example_inputs[0]
    reps = -(-n // x.shape[0])
    return (x.repeat(reps, *([1] * (x.dim() - 1)))[:n],)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    manifest = read_manifest()
    rows, raw = [], {}
    for name in NAMES:
        if name != "minilm" and name not in manifest:
            rows.append([name, "not trained yet", "", "", "", "", ""])
            continue
        wl = load(name)
        inputs = batch_of(wl, args.batch)
        p = profile(wl.model, inputs, lambda m, wl=wl: wl.evaluate(m, limit=args.limit), repeats=10)
        raw[name] = p
        metric = ", ".join(f"{k}={v:.4f}" for k, v in p["metric"].items())
        route = manifest.get(name, {}).get("route", "pretrained (all-MiniLM-L6-v2)")
        rows.append([name, p["params"], p["macs"], p["batch_size"], p["latency_ms"], metric, route])
    write_result("zoo", "Reference models (dense)",
                 ["model", "params", "MACs", "batch", "latency ms", "metric (full eval split)", "training route"],
                 rows, notes="minilm fidelity is against itself (1.0 by definition); its batch is 32 sentences.",
                 setup={"batch_size": args.batch, "threads": args.threads}, raw=raw)


if __name__ == "__main__":
    main()
