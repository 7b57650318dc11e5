"""Pruning during training vs pruning the finished model, on fmnist-resnet, at equal optimizer steps.

Every arm starts from the shipped checkpoint and trains ``--epochs`` epochs of the built-in
fine-tune (:func:`prunekit.zoo.finetune.finetune`: Fashion-MNIST, shift+flip, AdamW lr 1e-3,
warm-up + cosine, batch 128) on :func:`prunekit.train.fit`; top-1 on all 10,000 test images.

- unstructured at each ``--sparsity``: one-shot global magnitude then the fine-tune, against
  :class:`prunekit.train.GradualPruning` (cubic from 0 to the sparsity over the first half of the
  steps, the rest at the final sparsity);
- structured at ``--target-macs`` (channels): one-shot l2 then the fine-tune, against
  - proximal Network Slimming (:class:`prunekit.train.Slimming`) for half the steps, a bn_scale cut,
    then the other half as fine-tune;
  - DepGraph-style group lasso (:class:`prunekit.train.GroupLasso`) for half the steps, an l2 cut,
    the other half as fine-tune. Strength 1e-4, as slimming's: in a 163-step probe from the shipped
    checkpoint, 1e-4 zeroed 9.4% of the channel groups at top-1 0.9255 (first 2000 test images),
    4e-4 zeroed 67% and fell to 0.6775, and 2e-3 collapsed the model;
  - soft filter pruning (:class:`prunekit.train.SoftFilterPruning`) for 80% of the steps, the chosen
    filters removed, then the last 20% as fine-tune.

Resumable: each finished arm is kept in ``benchmarks/results/during_training.partial.json`` and each
training phase checkpoints every ``--checkpoint-every`` steps under ``.cache/during_training/``, so a
rerun after a kill continues where it stopped. The result JSON is rewritten after every arm, with the
arms not yet run listed as pending.

    python benchmarks/bench_during_training.py [--epochs 5] [--threads 2] [--arms u98_oneshot ...]
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write_result  # noqa: E402

import prunekit  # noqa: E402
from prunekit.measure import count_macs  # noqa: E402
from prunekit.train import GradualPruning, GroupLasso, Slimming, SoftFilterPruning  # noqa: E402
from prunekit.zoo import load  # noqa: E402
from prunekit.zoo.finetune import finetune, finetune_steps  # noqa: E402

NAME = "fmnist-resnet"
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "during_training"
PARTIAL = RESULTS / "during_training.partial.json"
ARMS = ["u98_oneshot", "u98_gradual", "s30_oneshot_l2", "s30_slimming", "s30_sfp", "s30_group",
        "u95_oneshot", "u95_gradual", "control"]


def phase(key: str, model: torch.nn.Module, epochs: float, args, callbacks=()) -> torch.nn.Module:
    """Train ``model`` for ``epochs`` (resumable); a finished phase is cached as a prunekit file."""
    done = CACHE / f"{key}.safetensors"
    if done.exists():
        return prunekit.load(done)
    ckpt = CACHE / f"{key}.ckpt"
    from prunekit.train.checkpoint import latest
    finetune(model, NAME, epochs, seed=args.seed, callbacks=callbacks, checkpoint_dir=str(ckpt),
             checkpoint_every=args.checkpoint_every, resume=latest(ckpt) is not None)
    prunekit.save(model, done)
    shutil.rmtree(ckpt, ignore_errors=True)
    return model


def run_arm(arm: str, wl, args, macs_dense: int) -> dict:
    ex, e, key = wl.example_inputs, args.epochs, f"{arm}_e{args.epochs:g}"
    m = copy.deepcopy(wl.model)
    out: dict = {}
    if arm == "control":
        m = phase(key, m, e, args)
    elif arm.startswith("u"):
        sparsity = int(arm[1:3]) / 100
        if arm.endswith("oneshot"):
            prunekit.sparsify(m, sparsity)
            out["cut_top1"] = wl.evaluate(m)["top1"]
            m = phase(key, m, e, args)
        else:
            m = phase(key, m, e, args, [GradualPruning(sparsity, start=0.0, end=0.5)])
        out["sparsity"] = round(prunekit.sparsity_report(m).total["sparsity"], 4)
    elif arm == "s30_oneshot_l2":
        prunekit.prune(m, ex, target_macs=args.target_macs, criterion="l2")
        out["cut_top1"] = wl.evaluate(m)["top1"]
        m = phase(key, m, e, args)
    elif arm in ("s30_slimming", "s30_group"):
        cb, crit = ((Slimming(args.slimming_strength), "bn_scale") if arm == "s30_slimming"
                    else (GroupLasso(args.group_strength), "l2"))
        m = phase(key + "_reg", m, e / 2, args, [cb])
        cut = CACHE / f"{key}_cut.safetensors"
        if not cut.exists():
            prunekit.prune(m, ex, target_macs=args.target_macs, criterion=crit)
            prunekit.save(m, cut, meta={"cut_top1": wl.evaluate(m)["top1"]})
        m = prunekit.load(cut)
        out["cut_top1"] = m.prunekit_meta.get("cut_top1")
        m = phase(key + "_ft", m, e / 2, args)
    elif arm == "s30_sfp":
        m = phase(key + "_sfp", m, e * 0.8, args, [SoftFilterPruning(target_macs=args.target_macs, criterion="l2")])
        out["cut_top1"] = wl.evaluate(m)["top1"]
        m = phase(key + "_ft", m, e * 0.2, args)
    m.eval()
    out["top1"] = wl.evaluate(m)["top1"]
    out["macs_kept"] = round(count_macs(m, ex) / macs_dense, 4)
    return out


def label(arm: str, args, steps: int) -> tuple[str, str]:
    e, half = args.epochs, args.epochs / 2
    if arm == "control":
        return "dense", f"{e:g} epoch fine-tune (control)"
    if arm.startswith("u"):
        what = f"{int(arm[1:3])}% of weights (unstructured, global magnitude)"
        return what, (f"one-shot, then {e:g} epoch fine-tune" if arm.endswith("oneshot")
                      else f"gradual (cubic over the first {steps // 2} of {steps} steps), during training")
    what = f"{args.target_macs:.0%} of MACs kept (channels)"
    return what, {
        "s30_oneshot_l2": f"one-shot l2, then {e:g} epoch fine-tune",
        "s30_slimming": f"proximal slimming ({args.slimming_strength:g}) {half:g} epoch, bn_scale cut, {half:g} "
                        "epoch fine-tune",
        "s30_group": f"group lasso ({args.group_strength:g}) {half:g} epoch, l2 cut, {half:g} epoch fine-tune",
        "s30_sfp": f"soft filter pruning {0.8 * e:g} epoch (l2, zeroed each epoch), removed, {0.2 * e:g} epoch "
                   "fine-tune",
    }[arm]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=5.0, help="training budget of every arm")
    ap.add_argument("--target-macs", type=float, default=0.3)
    ap.add_argument("--slimming-strength", type=float, default=1e-4)
    ap.add_argument("--group-strength", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--arms", nargs="*", default=ARMS, choices=ARMS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    CACHE.mkdir(parents=True, exist_ok=True)
    wl = load(NAME)
    steps = finetune_steps(args.epochs)
    macs_dense = count_macs(wl.model, wl.example_inputs)
    setup = {"epochs": args.epochs, "batch_size": 128, "seed": args.seed, "steps": steps,
             "target_macs": args.target_macs}
    partial = json.loads(PARTIAL.read_text()) if PARTIAL.exists() else {}
    if partial.get("setup") != setup:
        partial = {"setup": setup, "arms": {}}
    dense = wl.evaluate(wl.model)["top1"]
    for arm in args.arms:
        if arm not in partial["arms"]:
            print(f"arm {arm}", flush=True)
            partial["arms"][arm] = run_arm(arm, wl, args, macs_dense)
            PARTIAL.write_text(json.dumps(partial, indent=2) + "\n")
        write(partial, args, steps, dense, setup)


def write(partial: dict, args, steps: int, dense: float, setup: dict) -> None:
    rows = [["dense (shipped)", "-", round(dense, 4), 1.0, "-"]]
    arms = partial["arms"]
    for arm in ARMS:
        what, how = label(arm, args, steps)
        r = arms.get(arm)
        kept = "-" if not r else r.get("sparsity", r["macs_kept"])
        rows.append([what, how, r["top1"] if r else "pending", kept,
                     r.get("cut_top1", "-") if r else "-"])
    gaps = {}
    for target, best, base in (("98% sparsity", ["u98_gradual"], "u98_oneshot"),
                               ("95% sparsity", ["u95_gradual"], "u95_oneshot"),
                               ("30% MACs", ["s30_slimming", "s30_group", "s30_sfp"], "s30_oneshot_l2")):
        have = [a for a in best if a in arms]
        if have and base in arms:
            top = max(have, key=lambda a: arms[a]["top1"])
            gaps[target] = {"best_during": top, "points": round(100 * (arms[top]["top1"] - arms[base]["top1"]), 2)}
    write_result("during_training", "fmnist-resnet: pruning during training vs pruning the finished model "
                 f"(same {steps} optimizer steps)", ["compression", "how", "top1", "weight sparsity / MACs "
                 "kept", "top1 right after the cut"], rows,
                 notes=(f"Every trained arm gets {steps} optimizer steps ({args.epochs:g} epochs of Fashion-MNIST, "
                        "batch 128, AdamW lr 1e-3, warm-up + cosine, shift+flip) from the shipped checkpoint, on "
                        "prunekit.train.fit. Top-1 on all 10,000 test images. The fourth column is the sparsity of all "
                        "weight matrices for the unstructured arms (dense MACs: zeros are not skipped), the MACs "
                        "kept for the structured ones. Best during-training arm minus one-shot + fine-tune, "
                        f"in points: {json.dumps(gaps)}. 'pending': not run yet (the script resumes)."),
                 setup={**setup, "threads": args.threads}, raw={"arms": arms, "gaps": gaps})


if __name__ == "__main__":
    main()
