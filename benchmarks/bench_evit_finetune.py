"""EViT fine-tuned vs training-free, beside the shipped DynamicViT, at DynamicViT's token counts on fmnist-vit.

The DynamicViT issue asks for EViT "training-free and fine-tuned" on the same curve as DynamicViT,
ToMe and top-k drop. This script patches the shipped fmnist-vit with :func:`prunekit.tokens.evit`
removing the tokens the shipped ``fmnist-vit-dynamic`` removes (after the attention of blocks 2, 5
and 8, so the next block sees 137 / 96 / 67 patch tokens) and fine-tunes it with the recovery trainer
(:func:`prunekit.train.fit`) on the budget of DynamicViT's first stage: ``--epochs`` over all 60,000 training
images (shift + flip, batch 64), AdamW at ``--lr`` with warm-up and cosine, distilled (KL) from the
frozen dense fmnist-vit. ToMe at the same counts can be fine-tuned the same way for a fair comparison
(``--methods evit tome``; not by default: each epoch costs about 45 CPU min). Top-1 on all 10,000 test
images (``--limit``); MACs per image from the flop counter.

Training writes a checkpoint every 100 steps under ``.cache/evit_finetune/`` and resumes from it
when started again with the same settings, so a stopped run loses at most 100 steps.

    python benchmarks/bench_evit_finetune.py [--epochs 1] [--lr 1e-4] [--methods evit tome] [--limit 0]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from bench_dynamic_vit import removals
from common import RESULTS, write_result

import prunekit.tokens as tokens
from prunekit.measure import count_macs
from prunekit.train import fit
from prunekit.train.checkpoint import latest
from prunekit.zoo import load
from prunekit.zoo.train import _fmnist, _loader

NAME = "evit_finetune"
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "evit_finetune"
BATCH = 64
REDUCERS = {"evit": tokens.evit, "tome": tokens.merge}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--methods", nargs="+", default=["evit"], choices=sorted(REDUCERS))
    ap.add_argument("--limit", type=int, default=0, help="test images (0: all 10,000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train", type=int, default=0, help="training images (0: all 60,000)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    limit = args.limit or None
    wl = load("fmnist-vit")
    dense = wl.model.eval()
    dyn = load("fmnist-vit-dynamic")
    counts = dyn.model.token_counts()
    r = removals(counts)
    x1 = (wl.example_inputs[0][:1],)
    dense_macs = count_macs(dense, x1)
    dense_top1 = wl.evaluate(dense, limit=limit)["top1"]
    dyn_top1 = dyn.evaluate(dyn.model, limit=limit)["top1"]
    rows = [["dense", "-", 1.0, dense_top1, 0.0, "-"],
            [f"dynamicvit (shipped fmnist-vit-dynamic, sha {str(dyn.info.get('sha256'))[:8]})",
             "its manifest route (below)", round(
                count_macs(dyn.model, x1) / dense_macs, 4), dyn_top1, round(100 * (dyn_top1 - dense_top1), 2),
             dyn.info.get("train_minutes")]]
    print(rows, flush=True)
    x, y = _fmnist(args.train or None)
    raw = {"token_counts": counts, "removals": r}
    for method in args.methods:
        model = REDUCERS[method](copy.deepcopy(dense), r=r)
        macs = round(count_macs(model, x1) / dense_macs, 4)
        free = wl.evaluate(model, limit=limit)["top1"]
        rows.append([method, "training-free", macs, free, round(100 * (free - dense_top1), 2), 0.0])
        print(rows[-1], flush=True)
        folder = CACHE / f"{method}-e{args.epochs:g}-lr{args.lr:g}-n{x.shape[0]}"
        t0 = time.time()
        result = fit(model, _loader(x, y, BATCH, True), teacher=dense, epochs=args.epochs, lr=args.lr,
                     batch=BATCH, steps_per_epoch=x.shape[0] // BATCH, checkpoint_dir=str(folder),
                     checkpoint_every=100, resume=latest(folder) is not None, desc=f"{method} fine-tune")
        minutes = round((time.time() - t0) / 60, 1)
        tuned = wl.evaluate(model, limit=limit)["top1"]
        how = f"{args.epochs:g} epoch, {x.shape[0] // 1000}k, lr {args.lr:g}"
        rows.append([f"{method} (fine-tuned)", how, macs, tuned, round(100 * (tuned - dense_top1), 2), minutes])
        raw[method] = {"steps": result.steps, "last_loss": result.last_loss, "parts": result.parts,
                       "resumed_from": result.resumed_from, "images_per_s": result.images_per_s}
        print(rows[-1], flush=True)
    dyn_doc = json.loads((RESULTS / "dynamic_vit.json").read_text())
    write_result(NAME, "EViT and ToMe fine-tuned like DynamicViT, at DynamicViT's token counts on fmnist-vit",
                 ["method", "training", "MACs ratio", "top1", "change (pts)", "train wall min"], rows,
                 notes=(f"Patch tokens per block {counts[0]}/{counts[3]}/{counts[6]}/{counts[9]} (removed after the "
                        "attention of blocks 2, 5, 8), the counts of the shipped fmnist-vit-dynamic. Fine-tuning: "
                        f"prunekit.train.fit, {args.epochs:g} epoch(s) over {x.shape[0]} training images (shift+flip, "
                        f"batch {BATCH}), AdamW lr {args.lr:g} with warm-up + cosine, 0.5 KL from the frozen dense "
                        "fmnist-vit, the whole model trained. The DynamicViT row is the shipped checkpoint, trained "
                        f"as its manifest says: {dyn.info.get('route')}. Top-1 on "
                        f"{'the first ' + str(limit) if limit else 'all 10,000'} test images "
                        f"({args.threads} threads while training; train wall min counts any pause of the run, and the "
                        "dynamicvit row gives its recorded CPU minutes). The dynamicvit row is re-evaluated here; "
                        f"dynamic_vit.json has {dyn_doc['setup'].get('eval_subset')} images."),
                 setup={"threads": args.threads, "eval_subset": limit or 10000, "epochs": args.epochs,
                        "lr": args.lr, "train_images": int(x.shape[0]), "batch": BATCH}, raw=raw)


if __name__ == "__main__":
    main()
