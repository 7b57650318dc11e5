"""DynamicViT (learned token pruning) on fmnist-vit against training-free reducers at the same token counts.

Trains :class:`prunekit.tokens.dynamic.DynamicViT` (scorers before blocks 3, 6, 9, keeping 70% of the
remaining patch tokens at each: 196 -> 137 -> 96 -> 67) on the first ``--train`` Fashion-MNIST
training images with :func:`prunekit.train.fit_dynamic` (dense fmnist-vit as teacher,
backbone frozen unless ``--backbone-lr`` > 0), then compares on the first ``--limit`` test images:

- ``dynamicvit``: the trained model; ``dynamicvit (untrained scorers)``: same tokens kept by the
  freshly initialised scorers on the dense backbone (what the learning adds);
- ``drop (class attention)``: top-k by class-token attention (EViT-style, training-free) and
  ``tome``: ToMe merging, both removing the same numbers of tokens after the attention of blocks
  2, 5, 8 (so their blocks 3-11 see the same token counts as DynamicViT's).

MACs per image from torch.utils.flop_counter; latency of one batch of ``--batch`` test images on 1
thread, each configuration timed in alternating rounds with the dense model.

With ``--shipped`` nothing is trained here: the ``dynamicvit`` row is the zoo's ``fmnist-vit-dynamic``
(trained by ``prunekit zoo train fmnist-vit-dynamic``: the whole backbone fine-tuned, distilled, on all
60,000 training images; its manifest records the route), and an ``evit`` row (top-k by class
attention plus one fused token) joins the training-free reducers. ``--limit 0``: all 10,000 test images.

    python benchmarks/bench_dynamic_vit.py [--train 9600] [--limit 2000]
    python benchmarks/bench_dynamic_vit.py --shipped --limit 0
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from bench_tome_timing import paired_rounds
from common import write_result

import prunekit.tokens as tokens
from prunekit.data import load_fashion_mnist, normalize
from prunekit.measure import count_macs
from prunekit.tokens.dynamic import DynamicViT
from prunekit.train import fit_dynamic
from prunekit.zoo import load

NAME = "dynamic_vit"
COLUMNS = ["method", "patch tokens per block", "MACs ratio", "top1", "change (pts)", "cpu_ms/batch",
           "throughput ratio (cpu)"]
STAGES, KEEP = (3, 6, 9), 0.7


def removals(counts: list[int]) -> list[int]:
    """Per-block r for the engine (removed after a block's attention) giving the next block ``counts``."""
    return [counts[i] - counts[i + 1] for i in range(len(counts) - 1)] + [0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=9600, help="training images (the first N of the train split)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-train", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--backbone-lr", type=float, default=0.0, help="backbone learning rate; 0 trains the scorers only")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--shipped", action="store_true", help="measure the zoo's fmnist-vit-dynamic; train nothing")
    args = ap.parse_args()
    args.limit = args.limit or None
    torch.set_num_threads(2)
    torch.manual_seed(0)
    wl = load("fmnist-vit")
    dense = wl.model
    x, y = load_fashion_mnist("train")
    batches = [] if args.shipped else [(normalize(x[i:i + args.batch_train]), y[i:i + args.batch_train])
                                       for i in range(0, args.train, args.batch_train)]
    untrained = DynamicViT(copy.deepcopy(dense), STAGES, KEEP).eval()
    if args.shipped:
        shipped = load("fmnist-vit-dynamic")
        trained, tail = shipped.model, []
        train_min = shipped.info.get("train_minutes", 0.0)
        how = (f"the shipped fmnist-vit-dynamic ({shipped.info.get('route', '')}; {train_min} CPU min, "
               f"command: {shipped.info.get('command', '')})")
    else:
        trained = copy.deepcopy(untrained)
        t0 = time.time()
        hist = fit_dynamic(trained, batches, epochs=args.epochs, lr=args.lr, backbone_lr=args.backbone_lr,
                           teacher=dense)
        train_min = (time.time() - t0) / 60
        tail = hist[-20:]
        kept = sum(h["kept"] for h in tail) / len(tail)
        print(f"trained in {train_min:.1f} min; last 20 steps: kept {kept:.3f} (target {KEEP ** len(STAGES):.3f})")
        how = (f"trained {args.epochs} epoch(s) on the first {args.train} training images (batch {args.batch_train}, "
               f"scorer lr {args.lr}, backbone lr {args.backbone_lr}, dense fmnist-vit as teacher) in "
               f"{train_min:.1f} CPU min on 2 threads; share kept in training over the last 20 steps {kept:.3f} "
               f"(target {KEEP ** len(STAGES):.3f})")

    counts = trained.token_counts()
    reducer_r = removals(counts)
    models = {"dense": dense, "dynamicvit": trained, "dynamicvit (untrained scorers)": untrained,
              "drop (class attention)": tokens.drop(copy.deepcopy(dense), r=reducer_r),
              **({"evit (class attention + fused token)": tokens.evit(copy.deepcopy(dense), r=reducer_r)}
                 if args.shipped else {}),
              "tome": tokens.merge(copy.deepcopy(dense), r=reducer_r)}
    x1 = wl.example_inputs[0][:1]
    xb = normalize(load_fashion_mnist("test")[0][:args.batch])
    dense_macs = count_macs(dense, (x1,))
    res = {}
    for name, m in models.items():
        res[name] = {"macs": count_macs(m, (x1,)), "top1": wl.evaluate(m, limit=args.limit)["top1"]}
        print(name, res[name], flush=True)
    current = {"model": dense}

    def timed(name):
        current["model"] = models[name]

    class Switch(torch.nn.Module):
        def forward(self, x):
            return current["model"](x)

    timing = paired_rounds(Switch(), (xb,), {n: (lambda n=n: timed(n)) for n in models if n != "dense"},
                           lambda: timed("dense"), args.rounds, args.repeats)
    shown = {"dense": [196] * 12, "dynamicvit": counts, "dynamicvit (untrained scorers)": counts,
             "drop (class attention)": counts, "evit (class attention + fused token)": counts, "tome": counts}
    rows = []
    for name in models:
        t = timing.get(name)
        rows.append([name, "/".join(map(str, sorted(set(shown[name]), reverse=True))),
                     round(res[name]["macs"] / dense_macs, 4), res[name]["top1"],
                     round(100 * (res[name]["top1"] - res["dense"]["top1"]), 2),
                     round(t["median_cpu_ms"], 1) if t else None, round(t["ratio_cpu"], 3) if t else 1.0])
    write_result(NAME, "DynamicViT (learned token pruning) on fmnist-vit vs training-free reducers at equal token "
                       "counts", COLUMNS, rows,
                 notes=f"DynamicViT: scorers before blocks {STAGES}, keep {KEEP} per stage; {how}. drop / evit / "
                       f"tome remove the same counts after the attention of blocks {tuple(s - 1 for s in STAGES)}. "
                       f"top1 on {f'the first {args.limit}' if args.limit else 'all 10,000'} test images. Latency: "
                       f"batch {args.batch}, 1 thread, {args.rounds} rounds x {args.repeats} forwards, each paired "
                       "with a dense run; throughput ratio = median of per-round dense/method CPU-time ratios.",
                 setup={"batch_size": args.batch, "threads": 1, "eval_subset": args.limit or 10000,
                        "train_images": 60000 if args.shipped else args.train, "train_minutes": round(train_min, 2),
                        "shipped": args.shipped},
                 raw={"history_tail": tail, "token_counts": counts})


if __name__ == "__main__":
    main()
