"""minilm (all-MiniLM-L6-v2): SparseGPT vs Wanda vs magnitude at 50% and 2:4, and OWL layer ratios at 70%.

All 36 encoder Linear layers are sparsified (the pooler, the last Linear, stays dense; the mean-pooled
sentence embedding does not use it). Wanda, SparseGPT and OWL calibrate on the same ``--calib``
sentences of ``corpus[2000:]``; fidelity (mean cosine similarity to the dense sentence embeddings) and
top-1 retrieval agreement are measured on ``corpus[:limit]``, disjoint from the calibration sentences.
``prune_s`` is the wall time of the ``sparsify`` call (calibration included) at ``--threads``.

    .venv/bin/python benchmarks/bench_sparsegpt_minilm.py --threads 1
"""
from __future__ import annotations

import copy
import time

from bench_sparsity_minilm import prepare
from common import write_result

import prunekit
from prunekit.sparse import OWL

NAME = "sparsity_minilm_sparsegpt"
COLUMNS = ["pattern", "criterion", "scope", "sparsity", "layer_range", "fidelity", "retrieval_top1", "prune_s"]
SCOPES = {"local": "local", "owl": OWL(), "owl/layer": OWL(blocks=False)}  # owl: one ratio per block, as the paper
CONFIGS = [  # (pattern, sparsity, criterion, scope)
    ("unstructured", 0.5, "magnitude", "local"), ("unstructured", 0.5, "wanda", "local"),
    ("unstructured", 0.5, "sparsegpt", "local"),
    ("2:4", None, "magnitude", "local"), ("2:4", None, "wanda", "local"), ("2:4", None, "sparsegpt", "local"),
    ("unstructured", 0.7, "magnitude", "local"), ("unstructured", 0.7, "magnitude", "owl"),
    ("unstructured", 0.7, "wanda", "local"), ("unstructured", 0.7, "wanda", "owl"),
    ("unstructured", 0.7, "wanda", "owl/layer"),
    ("unstructured", 0.7, "sparsegpt", "local"), ("unstructured", 0.7, "sparsegpt", "owl"),
]


def _summary(fid: dict) -> str:
    """The issue's goals, stated with the measured differences."""
    def diff(a, b):
        return fid[a] - fid[b]
    d50 = diff(("unstructured", 0.5, "sparsegpt", "local"), ("unstructured", 0.5, "wanda", "local"))
    d24 = diff(("2:4", None, "sparsegpt", "local"), ("2:4", None, "wanda", "local"))
    owl = {c: diff(("unstructured", 0.7, c, "owl"), ("unstructured", 0.7, c, "local"))
           for c in ("magnitude", "wanda", "sparsegpt")}
    said = [f"SparseGPT - Wanda fidelity: {d50:+.4f} at 50% (goal >= 0: {'met' if d50 >= 0 else 'not met'}), "
            f"{d24:+.4f} at 2:4 (goal >= +0.03: {'met' if d24 >= 0.03 else 'not met'})."]
    said.append("OWL - uniform fidelity at 70%: " + ", ".join(f"{c} {v:+.4f}" for c, v in owl.items()) + " ("
                + "; ".join(f"{c}: {'improves' if owl[c] > 0 else 'does not improve'}" for c in ("wanda", "sparsegpt"))
                + ").")
    return " ".join(said)


def main() -> None:
    args, wl, dense_metric, calib = prepare()
    rows = [["dense", "-", "-", 0.0, "-", dense_metric["fidelity"], dense_metric["retrieval_top1"], 0.0]]
    fid, raw = {}, {}
    for pattern, sparsity, criterion, scope in CONFIGS:
        model = copy.deepcopy(wl.model)
        t0 = time.perf_counter()
        res = prunekit.sparsify(model, sparsity, criterion=criterion, scope=SCOPES[scope], pattern=pattern,
                                calib=calib if criterion != "magnitude" or scope != "local" else None)
        dt = time.perf_counter() - t0
        prunekit.finalize(model)
        m = wl.evaluate(model, limit=args.limit)
        spread = f"{min(res.layers.values()):.3f}-{max(res.layers.values()):.3f}"
        rows.append([pattern, criterion, scope, res.total, spread, m["fidelity"], m["retrieval_top1"], round(dt, 2)])
        fid[(pattern, sparsity, criterion, scope)] = m["fidelity"]
        raw[f"{pattern}/{sparsity}/{criterion}/{scope}"] = res.layers
        print(rows[-1], flush=True)
    summary = _summary(fid)
    print(summary)
    write_result(NAME, "minilm: SparseGPT vs Wanda vs magnitude (50%, 2:4) and OWL layer ratios at 70%", COLUMNS,
                 rows, notes=f"{summary} Fidelity = mean cosine similarity to the dense sentence embeddings on "
                             f"corpus[:{args.limit}]; calibration (wanda, sparsegpt, owl): {args.calib} sentences "
                             "of corpus[2000:] (disjoint), padded batches of 32. Targets: the 36 encoder Linear "
                             "layers (pooler dense). Wanda compares within each output row, SparseGPT within each "
                             "layer's column blocks (blocksize 128, dampening 0.01), magnitude 'local' prunes each "
                             "layer alike. OWL (M=5, lambda=0.08): one ratio per encoder block from the outlier "
                             "share of its pooled Wanda scores, as in the paper ('owl/layer': one per Linear), "
                             "the 36 layers together exactly at the target; layer_range is the lowest-highest "
                             "layer sparsity. prune_s: the "
                             "sparsify call at the stated threads (SparseGPT's sequential calibration runs the "
                             "calibration set once per group of layers sharing an input, 24 groups here).",
                 setup={"threads": args.threads, "batch_size": 64, "eval_sentences": args.limit,
                        "calib_sentences": args.calib}, raw={"layers": raw})


if __name__ == "__main__":
    main()
