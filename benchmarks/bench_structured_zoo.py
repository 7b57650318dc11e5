"""Structured pruning of the zoo classifiers: speed, one-shot accuracy per criterion, fine-tuned accuracy.

- fmnist-resnet kept at 50% of its MACs (``target_macs=0.5``, global scope): CPU latency at batch 64,
  dense vs pruned in the same process; one-shot top-1 for every criterion; top-1 after the built-in
  fine-tune (``--finetune-epochs``, fractional allowed) for the default criterion.
- fmnist-vit with 50% of its heads and MLP neurons removed (``ratio=0.5, scope="local"``, residual
  width kept): CPU throughput at batch 64, one-shot and fine-tuned top-1.

    python benchmarks/bench_structured_zoo.py --limit 2000 --finetune-epochs 0.3

``--speed-only`` re-prunes with the first criterion (deterministic), checks the MACs kept against the
existing JSON, and re-measures only the speed columns, with ``--rounds`` interleaved rounds; the
accuracy and fine-tune results already in the JSON stay as they are.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write_result  # noqa: E402

import prunekit  # noqa: E402
from prunekit.data import load_fashion_mnist, normalize  # noqa: E402
from prunekit.measure import compare_latency, count_macs, count_params  # noqa: E402
from prunekit.zoo import load  # noqa: E402
from prunekit.zoo.finetune import finetune  # noqa: E402

CRITERIA = ["l2", "l1", "bn_scale", "taylor", "random"]


def calib_batches(n: int = 256, batch: int = 64):
    x, y = load_fashion_mnist("train")
    return [(normalize(x[i:i + batch]), y[i:i + batch]) for i in range(0, n, batch)]


def latency_pair(dense: nn.Module, pruned: nn.Module, x: torch.Tensor, repeats: int, threads: int,
                 rounds: int = 3):
    """Interleaved dense/pruned timings (median of ``rounds`` round medians), so background load hits both alike."""
    med = compare_latency({"dense": dense, "pruned": pruned}, (x,), rounds, 2, repeats, threads)
    return med["dense"], med["pruned"]


def speed_only(name: str, kwargs: dict, crit: str, args) -> None:
    """Re-measure dense vs pruned speed for ``name`` and update its existing JSON in place."""
    path = RESULTS / f"structured_{name.replace('fmnist-', '')}.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist; run without --speed-only first")
    doc = json.loads(path.read_text())
    row = doc["raw"][name][crit]
    wl = load(name)
    x64 = normalize(load_fashion_mnist("test")[0][:64])
    m = copy.deepcopy(wl.model)
    prunekit.prune(m, wl.example_inputs, criterion=crit, **kwargs)
    kept = round(count_macs(m, (x64,)) / count_macs(wl.model, (x64,)), 3)
    if kept != row["macs_kept"]:
        raise SystemExit(f"MACs kept {kept} != {row['macs_kept']} in {path}: the pruned model changed; rerun fully")
    dl, pl = latency_pair(wl.model, m, x64, args.repeats, args.threads, args.rounds)
    row.update(dense_ms=dl, pruned_ms=pl, speedup=round(dl / pl, 3),
               speed_remeasured={"rounds": args.rounds, "repeats": args.repeats, "threads": args.threads,
                                 "command": "python " + " ".join(sys.argv)})
    for r in doc["table"]["rows"]:
        if r[0] == name and r[1] == crit:
            r[4] = row["speedup"]
    doc["notes"] = re.sub(r" Speed re-measured with --speed-only:[^.]*\.", "", doc["notes"])
    doc["notes"] += (f" Speed re-measured with --speed-only: median of {args.rounds} interleaved rounds of "
                     f"{args.repeats} repeats, {args.threads} threads.")
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(name, crit, row["dense_ms"], row["pruned_ms"], row["speedup"])


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
        prunekit.prune(m, wl.example_inputs, criterion=crit,
                             calib=calib_batches() if crit == "taylor" else None, **kwargs)
        secs = time.perf_counter() - t0
        acc = wl.evaluate(m, limit=args.limit)["top1"]
        row = {"model": name, "criterion": crit, "macs_kept": round(count_macs(m, (x64,)) / macs0, 3),
               "params_kept": round(count_params(m) / params0, 3), "prune_s": round(secs, 2),
               "dense_top1": dense_acc, "oneshot_top1": acc}
        if crit == criteria[0]:
            dl, pl = latency_pair(dense, m, x64, args.repeats, args.threads, args.rounds)
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
    ap.add_argument("--speed-only", action="store_true", help="re-measure only the speed columns of the JSON")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved dense/pruned latency rounds")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows, raw = [], {}
    crit = args.criteria.split(",")
    settings = {"fmnist-resnet": ({"target_macs": 0.5}, crit),
                "fmnist-vit": ({"ratio": 0.5, "scope": "local", "ignore": [nn.LayerNorm]}, crit[:2])}
    if args.speed_only:
        for name in args.models.split(","):
            speed_only(name, settings[name][0], settings[name][1][0], args)
        return
    for name in args.models.split(","):
        if name in settings:
            run(name, *settings[name], args, rows, raw)
    notes = (f"Latency/throughput: batch 64, {args.threads} threads, median of {args.rounds} interleaved runs of "
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
