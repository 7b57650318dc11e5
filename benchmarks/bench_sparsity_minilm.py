"""minilm (all-MiniLM-L6-v2): Wanda vs magnitude fidelity at 50% unstructured and at 2:4 sparsity.

All Linear layers of the encoder are sparsified (the pooler, the last Linear, is left dense; it is not
used by the mean-pooled sentence embedding). Wanda's input norms come from ``--calib`` sentences of
``corpus[2000:]``; fidelity (mean cosine similarity to the dense embeddings) and top-1 retrieval
agreement are measured on ``corpus[:1000]``, disjoint from the calibration sentences.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sparsity_minilm.py
"""
from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from common import write_result

import prunekit
from prunekit.zoo import load
from prunekit.zoo.minilm import calibration_batches

NAME = "sparsity_minilm_wanda"
COLUMNS = ["pattern", "method", "scope", "sparsity", "fidelity", "retrieval_top1", "prune_s"]
CONFIGS = [("unstructured", "magnitude", "local"), ("unstructured", "magnitude", "global"),
           ("unstructured", "wanda", "local"), ("2:4", "magnitude", "local"), ("2:4", "wanda", "local")]


def prepare() -> tuple[argparse.Namespace, Any, dict, list]:
    """``--calib``, ``--limit``, ``--threads`` parsed and the threads set; minilm loaded and measured dense;
    the calibration batches: ``(args, workload, dense metric, calib)`` (shared with bench_sparsegpt_minilm)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wl = load("minilm")
    return args, wl, wl.evaluate(wl.model, limit=args.limit), calibration_batches(args.calib)


def main() -> None:
    args, wl, dense_metric, calib = prepare()
    rows = [["dense", "-", "-", 0.0, dense_metric["fidelity"], dense_metric["retrieval_top1"], 0.0]]
    for pattern, method, scope in CONFIGS:
        model = copy.deepcopy(wl.model)
        t0 = time.perf_counter()
        res = prunekit.sparsify(model, 0.5, criterion=method, scope=scope, pattern=pattern,
                                calib=calib if method == "wanda" else None)
        dt = time.perf_counter() - t0
        prunekit.finalize(model)
        m = wl.evaluate(model, limit=args.limit)
        rows.append([pattern, method, scope, res.total, m["fidelity"], m["retrieval_top1"], round(dt, 2)])
        print(rows[-1], flush=True)
    write_result(NAME, "minilm at 50% sparsity: Wanda vs magnitude (unstructured and 2:4)", COLUMNS, rows,
                 notes=f"Fidelity = mean cosine similarity to the dense sentence embeddings on corpus[:{args.limit}]; "
                       f"wanda calibration: {args.calib} sentences from corpus[2000:] (disjoint). Targets: the "
                       "36 encoder Linear layers (pooler left dense). Wanda compares within each output row; "
                       "magnitude 'layer' prunes 50% of each layer, 'global' one threshold over all layers.",
                 setup={"threads": args.threads, "batch_size": 64, "eval_sentences": args.limit,
                        "calib_sentences": args.calib})


if __name__ == "__main__":
    main()
