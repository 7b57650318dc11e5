"""all-MiniLM-L6-v2: remove 25% of the attention heads, per criterion; report embedding fidelity.

Fidelity = mean cosine similarity of pruned vs dense sentence embeddings, plus top-1 retrieval
agreement, over the first ``--limit`` corpus sentences. Heads are ranked globally over the 6 layers
(``scope="global"``) and, separately, the same number per layer (``scope="local"``). Calibration for
``taylor`` uses corpus sentences disjoint from the eval set.

    python benchmarks/bench_structured_minilm.py --limit 500
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

import prunekit  # noqa: E402
from prunekit.measure import count_macs, count_params  # noqa: E402
from prunekit.zoo import load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--criteria", default="l2,l1,taylor,random")
    ap.add_argument("--scopes", default="global,local")
    args = ap.parse_args()
    torch.manual_seed(0)
    from prunekit.zoo.minilm import calibration_batches
    wl = load("minilm")
    macs0, params0 = count_macs(wl.model, wl.example_inputs), count_params(wl.model)
    rows, raw = [], {}
    for scope in args.scopes.split(","):
        for crit in args.criteria.split(","):
            m = copy.deepcopy(wl.model)
            t0 = time.perf_counter()
            res = prunekit.prune(m, wl.example_inputs, ratio=0.25, units=("heads",), scope=scope, criterion=crit,
                                 calib=calibration_batches(64) if crit == "taylor" else None)
            secs = time.perf_counter() - t0
            metric = wl.evaluate(m, limit=args.limit)
            heads = [d["kept"] for d in res.decisions if d["unit"] == "heads"]
            row = [scope, crit, sum(heads), round(count_macs(m, wl.example_inputs) / macs0, 3),
                   round(count_params(m) / params0, 3), metric["fidelity"], metric["retrieval_top1"], round(secs, 2)]
            print(row, flush=True)
            rows.append(row)
            raw[f"{scope}/{crit}"] = {"heads_per_layer": heads, **metric}
    best = max(rows, key=lambda r: r[5])
    write_result("structured_minilm_heads", "MiniLM: 25% of attention heads removed",
                 ["scope", "criterion", "heads kept (of 72)", "MACs kept", "params kept", "fidelity",
                  "retrieval top1", "prune s"], rows,
                 f"Eval: first {args.limit} corpus sentences; MACs on the 32-sentence example batch. Best: "
                 f"{best[0]} {best[1]} (fidelity {best[5]}).", setup={"limit": args.limit}, raw=raw)


if __name__ == "__main__":
    main()
