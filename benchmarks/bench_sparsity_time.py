"""Pruning time: prunekit global magnitude vs ``torch.nn.utils.prune.global_unstructured`` (L1).

timm resnet50 with random weights (no download needed; the time does not depend on the values). Both
prune the same parameters (every Conv2d and Linear weight except the classifier ``fc``) to the same
global sparsity, measured in the same run, alternating, each on a fresh copy of the model; median of
``--repeats`` (``--clock cpu``: process CPU time, single-threaded). Also checks that both choose the
identical mask, and reports the extra memory each leaves attached to the model (torch: ``weight_orig``
plus a float mask per weight; prunekit: a bool mask).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sparsity_time.py
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import timm
import torch
import torch.nn.utils.prune as tprune
from common import write_result

import prunekit
from prunekit.sparse import default_targets

NAME = "sparsity_pruning_time"
CLOCK = time.process_time
COLUMNS = ["model", "sparsity", "weights", "prunekit_s", "torch_prune_s", "speedup", "same_mask",
           "prunekit_extra_mb", "torch_extra_mb"]


def extra_mb(model: torch.nn.Module, base: set[str]) -> float:
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return round(sum(t.numel() * t.element_size() for k, t in tensors.items() if k not in base) / 2**20, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    base_model = timm.create_model(args.model, pretrained=False).eval()
    names = [n for n, _ in default_targets(base_model)]
    base = {k for k, _ in base_model.named_parameters()} | {k for k, _ in base_model.named_buffers()}
    ours, theirs = [], []
    same = True
    for _ in range(args.repeats):
        a, b = copy.deepcopy(base_model), copy.deepcopy(base_model)
        t0 = CLOCK()
        prunekit.sparsify(a, args.sparsity, criterion="magnitude", scope="global")
        ours.append(CLOCK() - t0)
        params = [(b.get_submodule(n), "weight") for n in names]
        t0 = CLOCK()
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=args.sparsity)
        theirs.append(CLOCK() - t0)
        same = same and all(torch.equal(a.get_submodule(n).weight_mask, b.get_submodule(n).weight_mask.bool())
                            for n in names)
        ours_mb, theirs_mb = extra_mb(a, base), extra_mb(b, base)
        del a, b
    n_weights = sum(base_model.get_submodule(n).weight.numel() for n in names)
    row = [args.model, args.sparsity, n_weights, round(statistics.median(ours), 3),
           round(statistics.median(theirs), 3), round(statistics.median(theirs) / statistics.median(ours), 2),
           same, ours_mb, theirs_mb]
    print(row)
    write_result(NAME, "Pruning time: global magnitude, prunekit vs torch.nn.utils.prune (same run)", COLUMNS, [row],
                 notes=f"{len(names)} layers (all Conv2d/Linear except the classifier), random weights; median of "
                       f"{args.repeats} alternating runs on fresh copies. speedup = torch / prunekit. extra_mb = "
                       "tensors each approach leaves attached to the model. "
                       f"Clock: {args.clock} ('cpu' = process CPU time, single-threaded, because the machine "
                       "was shared with training jobs; 'wall' = wall clock).",
                 setup={"threads": args.threads, "batch_size": "n/a (no forward pass)", "repeats": args.repeats,
                        "clock": args.clock},
                 raw={"prunekit_s": ours, "torch_prune_s": theirs})


if __name__ == "__main__":
    main()
