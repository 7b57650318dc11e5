"""Where mosaic-segvit loses mIoU: mask against class errors, per-item consistency, and memorisation.

On the first ``--limit`` test mosaics: the model's mIoU; with oracle classes on the pixels it calls
garment (what perfect recognition would give with its own masks); with the oracle garment mask and its
best item class per pixel (what perfect masks would give with its own recognition); with every
item's pixels set to that item's majority prediction (what perfectly consistent items would give).
Then mIoU on training mosaics the model trained on against fresh mosaics of the same training items
(a gap between the two is memorised mosaics, not items). Item slots come from
:func:`prunekit.data.mosaic_stream.instance_map`, which renders exactly the cached mosaics.

    python benchmarks/bench_segvit_errors.py [--limit 500] [--fresh-from 1000000]
"""
from __future__ import annotations

import argparse

import torch
from common import write_result

from prunekit.data import load_fashion_mnist, normalize
from prunekit.data.mosaic_stream import instance_map, render, sample_params
from prunekit.zoo import load
from prunekit.zoo.registry import miou_of as miou


@torch.no_grad()
def logits_of(model: torch.nn.Module, x: torch.Tensor, batch: int = 100) -> torch.Tensor:
    return torch.cat([model(normalize(x[i:i + batch])) for i in range(0, x.shape[0], batch)])


def mosaics(split: str, indices: range):
    items, labels = load_fashion_mnist(split)
    p = sample_params(0, split, indices, items.shape[0])
    x, y = render(p, items, labels)
    return x, y, instance_map(p, items)


def anatomy(model: torch.nn.Module, limit: int) -> dict:
    x, y, ids = mosaics("test", range(limit))
    logits = logits_of(model, x)
    pred = logits.argmax(1)
    fg = y > 0
    item_class = logits[:, 1:].argmax(1) + 1
    majority = pred.clone()
    px_right = px_total = items_right = 0
    for b in range(limit):
        for k in ids[b].unique().tolist():
            if k < 0:
                continue
            vis = ids[b] == k
            votes = pred[b][vis]
            garment = votes[votes > 0]
            top = int(garment.mode().values) if garment.numel() else 0
            majority[b][vis] = top
            true = int(y[b][vis][0])
            px_right += int((votes == true).sum())
            px_total += int(vis.sum())
            items_right += int(vis.sum()) if top == true else 0
    return {
        "miou": miou(pred, y),
        "miou_oracle_class": miou(torch.where(fg & (pred > 0), y, pred), y),
        "miou_oracle_mask": miou(torch.where(fg, item_class, torch.zeros_like(y)), y),
        "miou_item_majority": miou(majority, y),
        "item_pixels_right": px_right / px_total,
        "item_pixels_in_right_items": items_right / px_total,
        "fg_bg_error": float(((pred > 0) != fg).float().mean()),
        "wrong_item_class_pixels": float(((pred != y) & (pred > 0) & fg).float().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--fresh-from", type=int, default=1_000_000, help="first index of the fresh training mosaics")
    args = ap.parse_args()
    torch.set_num_threads(2)
    wl = load("mosaic-segvit")
    model = wl.model
    a = anatomy(model, args.limit)
    seen_x, seen_y, _ = mosaics("train", range(args.limit))
    fresh_x, fresh_y, _ = mosaics("train", range(args.fresh_from, args.fresh_from + args.limit))
    a["miou_seen_train"] = miou(logits_of(model, seen_x).argmax(1), seen_y)
    a["miou_fresh_train"] = miou(logits_of(model, fresh_x).argmax(1), fresh_y)
    words = {
        "miou": "mIoU on the test mosaics",
        "miou_oracle_class": "... with the true class on every pixel it calls garment",
        "miou_oracle_mask": "... with the true garment mask, its best item class per pixel",
        "miou_item_majority": "... with each item's pixels set to the item's majority prediction",
        "item_pixels_right": "share of item pixels given their item's class",
        "item_pixels_in_right_items": "share of item pixels in items whose majority class is right",
        "fg_bg_error": "share of pixels with garment/background wrong",
        "wrong_item_class_pixels": "share of pixels: garment called garment, of the wrong class",
        "miou_seen_train": f"mIoU on training mosaics 0-{args.limit - 1} (in every training set)",
        "miou_fresh_train": f"mIoU on fresh training mosaics from index {args.fresh_from} (same items, never seen)",
    }
    rows = [[words[k], round(v, 4)] for k, v in a.items()]
    write_result("segvit_errors", "Where mosaic-segvit loses mIoU (mask vs class, item consistency, memorisation)",
                 ["measure", "value"], rows,
                 notes=f"first {args.limit} test mosaics unless named; the shipped checkpoint "
                       f"(sha256 {wl.info.get('sha256', '')[:12]}); oracles replace one part of the prediction "
                       "with the truth, so each says how much mIoU that part costs.",
                 setup={"eval_subset": args.limit, "threads": 2}, raw=a)


if __name__ == "__main__":
    main()
