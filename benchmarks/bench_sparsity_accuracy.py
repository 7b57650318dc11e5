"""One-shot accuracy vs sparsity on fmnist-resnet and fmnist-vit for magnitude, wanda and random.

No fine-tuning. Targets: every Conv2d/Linear except the classifier. magnitude and random use one
global threshold; wanda compares within each output row (its input norms from 256 training images,
disjoint from the test images). Top-1 on the first ``--limit`` Fashion-MNIST test images (the dense
model is measured on the same subset). The 2:4 rows prune half of every group of 4 along each
layer's input (layers whose input size is not a multiple of 4 are left dense and listed).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sparsity_accuracy.py [--models ...] [--limit 2000]
"""
from __future__ import annotations

import argparse
import copy

import torch
from common import write_result

import prunekit
from prunekit.data import load_fashion_mnist, normalize
from prunekit.sparse import masks as M
from prunekit.zoo import load

NAME = "sparsity_accuracy"
SPARSITIES = ("0.5", "0.7", "0.8", "0.9", "0.95", "2:4")
METHODS = ("magnitude", "wanda", "wanda, input layer dense", "random")
COLUMNS = ["model", "method", "dense", *[f"{s}" for s in SPARSITIES]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["fmnist-resnet", "fmnist-vit"])
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, _ = load_fashion_mnist("train")
    calib = [(normalize(x[i:i + 64]),) for i in range(0, 256, 64)]
    for name in args.models:
        run_model(name, args.limit, args.threads, calib)


def run_model(name: str, limit: int, threads: int, calib: list) -> None:
    """Evaluate every method x sparsity on zoo model ``name``; writes sparsity_accuracy_<name>.json."""
    rows, raw = [], {}
    wl = load(name)
    dense = wl.evaluate(wl.model, limit=limit)[wl.metric_key]
    not_div = [n for n, m in prunekit.sparse.default_targets(wl.model) if M.as_matrix(m.weight).shape[1] % 4]
    raw[name] = {"dense": dense, "nm_left_dense": not_div, "checkpoint_sha256": wl.info.get("sha256")}
    first = prunekit.sparse.default_targets(wl.model)[0][0]
    for label in METHODS:
        method = label.split(",")[0]
        row = [name, label, dense]
        for s in SPARSITIES:
            model = copy.deepcopy(wl.model)
            nm = ":" in s
            ignore = set(not_div if nm else ()) | ({first} if "input layer dense" in label else set())
            res = prunekit.sparsify(model, None if nm else float(s), criterion=method, scope="global",
                                    pattern=s if nm else "unstructured", ignore=sorted(ignore),
                                    calib=calib if method == "wanda" else None)
            prunekit.finalize(model)
            acc = wl.evaluate(model, limit=limit)[wl.metric_key]
            raw[name][f"{label}:{s}"] = {"top1": acc, "achieved": res.total}
            row.append(acc)
            print(name, label, s, res.total, acc, flush=True)
        rows.append(row)
    write_result(f"{NAME}_{name}", f"{name}: one-shot sparsity, top-1 vs sparsity (no fine-tuning)", COLUMNS, rows,
                 notes=f"Top-1 on the first {limit} Fashion-MNIST test images. Columns are the target sparsity "
                       "of all Conv2d/Linear weights except the classifier (2:4 = 50% in groups of 4). magnitude "
                       "and random: global threshold; wanda: per output row, norms from 256 training images; "
                       "'wanda, input layer dense' leaves the first layer (patch embedding / stem conv, only "
                       "4 or 9 weights per output row) dense. "
                       "Layers left dense for 2:4 (input not a multiple of 4): " +
                       "; ".join(f"{k}: {v['nm_left_dense']}" for k, v in raw.items()),
                 setup={"threads": threads, "batch_size": 250, "eval_images": limit}, raw=raw)


if __name__ == "__main__":
    main()
