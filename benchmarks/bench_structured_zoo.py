"""Structured pruning of the zoo classifiers: speed, one-shot accuracy per criterion, fine-tuned accuracy.

- fmnist-resnet kept at 50% of its MACs (``target_macs=0.5``, global scope): CPU latency at batch 64,
  dense vs pruned in the same process; one-shot top-1 for every criterion; top-1 after the built-in
  fine-tune (``--finetune-epochs``, fractional allowed) for the default criterion.
- fmnist-vit with 50% of its heads and MLP neurons removed (``ratio=0.5, scope="local"``, residual
  width kept): CPU throughput at batch 64, one-shot and fine-tuned top-1.

    python benchmarks/bench_structured_zoo.py --limit 2000 --finetune-epochs 0.3
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

import prunekit  # noqa: E402
from prunekit.data import load_fashion_mnist, normalize  # noqa: E402
from prunekit.measure import count_macs, count_params, measure_latency  # noqa: E402
from prunekit.structured.finetune import finetune  # noqa: E402
from prunekit.zoo import load  # noqa: E402

CRITERIA = ["l2", "l1", "bn_scale", "taylor", "random"]


def calib_batches(n: int = 256, batch: int = 64):
    x, y = load_fashion_mnist("train")
    return [(normalize(x[i:i + batch]), y[i:i + batch]) for i in range(0, n, batch)]


def latency_pair(dense: nn.Module, pruned: nn.Module, x: torch.Tensor, repeats: int, threads: int):
    """Interleaved dense/pruned timings, so background load hits both alike."""
    d, p = [], []
    for _ in range(3):
        d.append(measure_latency(dense, (x,), warmup=2, repeats=repeats, num_threads=threads)["latency_ms"])
        p.append(measure_latency(pruned, (x,), warmup=2, repeats=repeats, num_threads=threads)["latency_ms"])
    return sorted(d)[1], sorted(p)[1]


def run(name: str, kwargs: dict, criteria: list[str], args, rows: list, raw: dict) -> None:
    wl = load(name)
    dense = wl.model
    x64 = normalize(load_fashion_mnist("test")[0][:64])
    dense_acc = wl.evaluate(dense, limit=args.limit)["top1"]
    macs0, params0 = count_macs(dense, (x64,)), count_params(dense)
    raw[name] = {"dense_top1": dense_acc, "kwargs": {k: repr(v) for k, v in kwargs.items()}}
    for crit in criteria:
        m = copy.deepcopy(dense)
        t0 = time.perf_counter()
        prunekit.prune(m, wl.example_inputs, importance=crit,
                             calib=calib_batches() if crit == "taylor" else None, **kwargs)
        secs = time.perf_counter() - t0
        acc = wl.evaluate(m, limit=args.limit)["top1"]
        row = {"model": name, "criterion": crit, "macs_kept": round(count_macs(m, (x64,)) / macs0, 3),
               "params_kept": round(count_params(m) / params0, 3), "prune_s": round(secs, 2),
               "dense_top1": dense_acc, "oneshot_top1": acc}
        if crit == criteria[0]:
            dl, pl = latency_pair(dense, m, x64, args.repeats, args.threads)
            row.update(dense_ms=dl, pruned_ms=pl, speedup=round(dl / pl, 3))
            if args.finetune_epochs:
                ft = finetune(m, name, args.finetune_epochs, samples=args.finetune_samples,
                              teacher=dense if args.distill else None)
                row["finetune"] = ft
                row["finetuned_top1"] = wl.evaluate(m, limit=args.limit)["top1"]
        print(row, flush=True)
        raw[name][crit] = row
        rows.append([name, crit, row["macs_kept"], row["params_kept"], row.get("speedup", ""), dense_acc, acc,
                     row.get("finetuned_top1", ""), row["prune_s"]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="fmnist-resnet,fmnist-vit")
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N test images")
    ap.add_argument("--finetune-epochs", type=float, default=1.0)
    ap.add_argument("--finetune-samples", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--distill", action="store_true", help="fine-tune with the dense model as teacher")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--criteria", default=",".join(CRITERIA))
    args = ap.parse_args()
    torch.manual_seed(0)
    rows, raw = [], {}
    crit = args.criteria.split(",")
    for name in args.models.split(","):
        if name == "fmnist-resnet":
            run(name, {"target_macs": 0.5}, crit, args, rows, raw)
        elif name == "fmnist-vit":
            run(name, {"ratio": 0.5, "scope": "local", "ignore": [nn.LayerNorm]}, crit[:2], args, rows, raw)
    notes = (f"Latency/throughput: batch 64, {args.threads} threads, median of 3 interleaved runs of "
             f"{args.repeats} repeats, dense and pruned in the same process. Accuracy on "
             f"{'the first ' + str(args.limit) if args.limit else 'all 10000'} test images. Fine-tune: "
             f"{args.finetune_epochs} epoch(s) on {args.finetune_samples or 60000} training images"
             f"{', distilled from the dense model' if args.distill else ''}, "
             "criterion in the first row of each model only. fmnist-vit: 50% of heads and MLP neurons "
             "per block, residual width kept.")
    names = args.models.split(",")
    short = "zoo" if len(names) > 1 else names[0].replace("fmnist-", "")
    write_result(f"structured_{short}", f"Structured pruning of {', '.join(names)}",
                 ["model", "criterion", "MACs kept", "params kept", "CPU speedup", "dense top1", "one-shot top1",
                  "fine-tuned top1", "prune s"], rows, notes,
                 setup={"batch_size": 64, "threads": args.threads, "limit": args.limit,
                        "finetune_epochs": args.finetune_epochs, "distill": args.distill}, raw=raw)


if __name__ == "__main__":
    main()
