"""ALGM's adaptive local stage (``merge_dense(threshold=...)``) against fixed window counts, per image.

At batch 1 each mosaic merges every 2x2 window whose keys are at least ``threshold`` alike (mean
pairwise cosine after block 0), so a mosaic with more uniform background merges more; a fixed
``windows=W`` merges W windows in every mosaic. Both then merge globally with ToMe decreasing
2r -> 0. Per image: MACs from torch.utils.flop_counter (shapes depend on the image) and its
prediction; the table gives the mean, min and max MACs ratio and mIoU over the first ``--limit``
test mosaics. Latency is not measured here (batch 1, data-dependent shapes); see bench_local_merge.

    python benchmarks/bench_local_merge_adaptive.py [--limit 300]
"""
from __future__ import annotations

import argparse
import warnings

import torch
from common import write_result

import prunekit.tokens as tokens
from prunekit.data import load_mosaic, normalize
from prunekit.measure import count_macs
from prunekit.zoo import load
from prunekit.zoo.registry import boundary_miou, miou_of

NAME = "local_merge_adaptive"
COLUMNS = ["method", "global r (dec)", "mean MACs ratio", "min", "max", "mIoU", "change (pts)", "boundary mIoU"]


@torch.no_grad()
def per_image(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    preds, macs = [], []
    for i in range(x.shape[0]):
        xi = normalize(x[i:i + 1])
        macs.append(count_macs(model, (xi,)))
        preds.append(model(xi).argmax(1))
    return torch.cat(preds), macs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.8, 0.9, 0.93, 0.95])
    ap.add_argument("--windows", type=int, nargs="+", default=[20, 25, 30])
    ap.add_argument("--r", type=int, default=10)
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    torch.set_num_threads(2)
    model = load("mosaic-segvit").model
    x, y = load_mosaic("test", n=args.limit)
    dense_pred, dense_macs = per_image(model, x)
    dense_miou = miou_of(dense_pred, y)
    configs = {"dense": None}
    configs.update({f"fixed {w} windows": dict(windows=w) for w in args.windows})
    configs.update({f"adaptive, threshold {t}": dict(windows=49, threshold=t) for t in args.thresholds})
    rows = []
    for name, kw in configs.items():
        tokens.unpatch(model)
        if kw is not None:
            tokens.merge_dense(model, r=tokens.decreasing(args.r), **kw)
        pred, macs = (dense_pred, dense_macs) if kw is None else per_image(model, x)
        ratio = [m / d for m, d in zip(macs, dense_macs, strict=True)]
        score = miou_of(pred, y)
        rows.append([name, 0 if kw is None else args.r, round(sum(ratio) / len(ratio), 4), round(min(ratio), 4),
                     round(max(ratio), 4), round(score, 4), round(100 * (score - dense_miou), 2),
                     round(boundary_miou(pred, y, 2), 4)])
        print(rows[-1], flush=True)
    tokens.unpatch(model)
    write_result(NAME, "mosaic-segvit: ALGM's adaptive local stage (per-image window threshold) vs fixed window "
                       "counts, batch 1", COLUMNS, rows,
                 notes=f"first {args.limit} test mosaics, each run alone (batch 1, so the threshold is per image); "
                       f"all merged rows then merge globally with ToMe decreasing 2r -> 0, r={args.r}. MACs ratio per "
                       "image against the dense model on that image; boundary mIoU on pixels within 2 px of a true "
                       "label change.",
                 setup={"batch_size": 1, "threads": 2, "eval_subset": args.limit})


if __name__ == "__main__":
    main()
