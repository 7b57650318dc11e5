"""Pruning during training vs pruning the finished model, on fmnist-resnet, at the same training budget.

Every arm starts from the shipped checkpoint and gets the same number of optimizer steps of the
built-in fine-tune (``--epochs`` of Fashion-MNIST, AdamW, lr 1e-3, shift+flip, batch 128); top-1 is
on the whole test split (10,000 images).

- unstructured at ``--sparsity``: one-shot magnitude then fine-tune, against
  :class:`prunekit.sparse.GradualPruner` (Zhu & Gupta's cubic schedule from 0 to the sparsity over the
  first ``--ramp`` of the steps, re-scored every ``--every`` steps, the rest at the final sparsity);
- structured at ``--target-macs``: one-shot l2 or bn_scale then fine-tune, against l2 in ``--rounds``
  cuts with ``1/rounds`` of the fine-tune after each (:func:`prunekit.structured.prune_iteratively`),
  and against Network Slimming (:func:`prunekit.structured.slimming_penalty` at each ``--strength``
  for the first half of the steps, then ``importance="bn_scale"`` and the second half as fine-tune).

The dense model fine-tuned as long is the control (the fine-tune alone may move top-1). Threads: 2.

    python benchmarks/bench_during_training.py [--epochs 1] [--sparsity 0.95] [--target-macs 0.3]
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
from prunekit.sparse import GradualPruner  # noqa: E402
from prunekit.structured import prune_iteratively, slimming_penalty  # noqa: E402
from prunekit.structured.slimming import scale_share_below  # noqa: E402
from prunekit.zoo import load  # noqa: E402
from prunekit.zoo.finetune import finetune, finetune_steps  # noqa: E402

NAME = "fmnist-resnet"


def top1(wl, model) -> float:
    return wl.evaluate(model)["top1"]


def unstructured(wl, args, steps: int) -> tuple[list[list], dict]:
    rows, raw = [], {}
    one = copy.deepcopy(wl.model)
    oneshot = prunekit.sparsify(one, args.sparsity).total
    raw["oneshot_cut"] = top1(wl, one)
    t = time.time()
    finetune(one, NAME, args.epochs, seed=args.seed)
    raw["oneshot_ft"], raw["oneshot_s"] = top1(wl, one), round(time.time() - t, 1)
    grad = copy.deepcopy(wl.model)
    end = max(2, int(steps * args.ramp))
    pruner = GradualPruner(grad, args.sparsity, end_step=end, every=args.every)
    t = time.time()
    finetune(grad, NAME, args.epochs, seed=args.seed, on_step=lambda s: pruner.step())
    raw["gradual"], raw["gradual_s"] = top1(wl, grad), round(time.time() - t, 1)
    raw["gradual_updates"] = len(pruner.history)
    raw["achieved"] = {"oneshot": oneshot, "gradual": pruner.sparsity}  # of the target layers
    label = f"{args.sparsity:.0%} of weights (unstructured, global magnitude)"
    rows.append([label, "one-shot, no training", round(raw["oneshot_cut"], 4), "-"])
    rows.append([label, f"one-shot, then {args.epochs:g} epoch fine-tune", round(raw["oneshot_ft"], 4),
                 raw["achieved"]["oneshot"]])
    rows.append([label, f"gradual (cubic over {end} of {steps} steps, {len(pruner.history)} updates)",
                 round(raw["gradual"], 4), raw["achieved"]["gradual"]])
    return rows, raw


def structured(wl, args, steps: int, macs_dense: int) -> tuple[list[list], dict]:
    rows, raw = [], {}
    ex = wl.example_inputs
    label = f"{args.target_macs:.0%} of MACs kept (channels)"
    for crit in ("l2", "bn_scale"):
        m = copy.deepcopy(wl.model)
        prunekit.prune(m, ex, target_macs=args.target_macs, importance=crit)
        cut = top1(wl, m)
        finetune(m, NAME, args.epochs, seed=args.seed)
        raw[crit] = {"cut": cut, "ft": top1(wl, m), "macs": count_macs(m, ex) / macs_dense}
        rows.append([label, f"one-shot {crit}, no training", round(cut, 4), round(raw[crit]["macs"], 3)])
        rows.append([label, f"one-shot {crit}, then {args.epochs:g} epoch fine-tune", round(raw[crit]["ft"], 4),
                     round(raw[crit]["macs"], 3)])
    m = copy.deepcopy(wl.model)
    prune_iteratively(m, ex, target_macs=args.target_macs, rounds=args.rounds, importance="l2",
                      train=lambda model, k: finetune(model, NAME, args.epochs / args.rounds, seed=args.seed + k))
    raw["iterative"] = {"ft": top1(wl, m), "macs": count_macs(m, ex) / macs_dense, "rounds": args.rounds}
    rows.append([label, f"l2 in {args.rounds} cuts, {args.epochs / args.rounds:.3g} epoch fine-tune after each",
                 round(raw["iterative"]["ft"], 4), round(raw["iterative"]["macs"], 3)])
    half = args.epochs / 2
    for strength in args.strength:
        m = copy.deepcopy(wl.model)
        finetune(m, NAME, half, seed=args.seed, regularizer=slimming_penalty(m, strength))
        small = scale_share_below(m, 0.05)
        prunekit.prune(m, ex, target_macs=args.target_macs, importance="bn_scale")
        cut = top1(wl, m)
        finetune(m, NAME, half, seed=args.seed + 1)
        key = f"slimming_{strength:g}"
        raw[key] = {"cut": cut, "ft": top1(wl, m), "macs": count_macs(m, ex) / macs_dense,
                    "share_gamma_below_0.05": small, "params": count_params(m)}
        rows.append([label, f"slimming (L1 {strength:g} on BN scales) {half:g} epoch, bn_scale cut, no more "
                            f"training ({small:.0%} of scales < 0.05)", round(cut, 4), round(raw[key]["macs"], 3)])
        rows.append([label, f"slimming {strength:g} {half:g} epoch, bn_scale cut, then {half:g} epoch fine-tune",
                     round(raw[key]["ft"], 4), round(raw[key]["macs"], 3)])
    return rows, raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=1.0, help="training budget of every arm")
    ap.add_argument("--sparsity", type=float, default=0.95)
    ap.add_argument("--target-macs", type=float, default=0.3)
    ap.add_argument("--strength", type=float, nargs="+", default=[1e-4, 1e-2])
    ap.add_argument("--ramp", type=float, default=0.5, help="share of the steps over which sparsity rises")
    ap.add_argument("--rounds", type=int, default=3, help="cuts of the iterative structured arm")
    ap.add_argument("--every", type=int, default=10, help="steps between gradual updates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["unstructured", "structured"])
    args = ap.parse_args()
    torch.set_num_threads(2)
    wl = load(NAME)
    steps = finetune_steps(args.epochs)
    macs_dense = count_macs(wl.model, wl.example_inputs)
    dense = top1(wl, wl.model)
    control = copy.deepcopy(wl.model)
    finetune(control, NAME, args.epochs, seed=args.seed)
    rows = [["dense (shipped)", "-", round(dense, 4), 1.0],
            ["dense", f"{args.epochs:g} epoch fine-tune (control)", round(top1(wl, control), 4), 1.0]]
    raw = {"dense": dense, "steps": steps}
    if "unstructured" not in args.skip:
        r, raw["unstructured"] = unstructured(wl, args, steps)
        rows += r
    if "structured" not in args.skip:
        r, raw["structured"] = structured(wl, args, steps, macs_dense)
        rows += r
    write_result("during_training", "fmnist-resnet: pruning during training vs pruning the finished model "
                 "(same training steps)", ["compression", "how", "top1", "sparsity / MACs kept"], rows,
                 notes=(f"Every trained arm gets {steps} optimizer steps ({args.epochs:g} epoch, batch 128, "
                        "AdamW lr 1e-3, shift+flip) from the shipped checkpoint; slimming spends half of them "
                        "with the L1 penalty before the cut and half after. Top-1 on all 10,000 test images. "
                        "Last column: achieved sparsity of the pruned layers (all Conv2d/Linear but the output "
                        "layer) or MACs kept / dense."),
                 setup={"epochs": args.epochs, "batch_size": 128, "seed": args.seed}, raw=raw)


if __name__ == "__main__":
    main()
