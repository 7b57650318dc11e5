"""DynamicViT's training-time decisions: the paper's per-token Gumbel samples against Gumbel-top-k.

Both runs start from the shipped dense fmnist-vit with fresh scorers (the same seed) and train with
:func:`prunekit.train.fit_dynamic` on the zoo recipe's objective and learning rates (scorers 1e-3,
whole backbone 1e-4, KL + token distillation from the frozen dense model, keep-ratio loss) for
``--epochs`` over the first ``--train`` training images; only ``DynamicViT.sampling`` differs:

- ``gumbel`` (the paper): each token kept or dropped by its own hard Gumbel-softmax sample; the
  keep-ratio loss pulls the share kept towards 0.7 / 0.49 / 0.343;
- ``topk``: exactly the inference counts (137 / 96 / 67 of 196), drawn by Gumbel-top-k.

Inference is the same top-k gather for both. Reported per run: top-1 on the first ``--limit`` test
images, the share kept after each stage in training (mean of the last 50 steps), and how decided
the scorers are at inference: the share of the tokens entering each stage whose keep-probability is
above 0.5. A scorer trained with per-token samples can meet the keep-ratio target on average while
leaving most tokens near 0.5; top-k then ranks on small differences.

``--start FILE``: both runs continue a trained DynamicViT state dict instead (a safetensors file,
e.g. the first shipped fmnist-vit-dynamic, one epoch with gumbel decisions:
``git show dfca42a:src/prunekit/zoo/checkpoints/fmnist-vit-dynamic.safetensors > stage1.safetensors``);
the results go to ``dynamic_sampling_continued.json``.

Each run checkpoints every 100 steps under ``.cache/dynamic_sampling/`` and resumes from there.

    python benchmarks/bench_dynamic_sampling.py [--epochs 0.15] [--train 0] [--limit 2000] [--start FILE]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import write_result
from safetensors.torch import load_file

from prunekit.data import load_fashion_mnist, normalize
from prunekit.measure import count_macs
from prunekit.tokens.dynamic import DynamicViT
from prunekit.train import fit_dynamic
from prunekit.train.checkpoint import latest
from prunekit.zoo import load
from prunekit.zoo.store import sha256
from prunekit.zoo.train import _fmnist, _loader
from prunekit.zoo.train_dynamic import BACKBONE_LR, BATCH, KEEP, LR, STAGES

NAME = "dynamic_sampling"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "dynamic_sampling"


def decided(model: DynamicViT, x: torch.Tensor) -> list[float]:
    """Share of the tokens entering each stage whose keep-probability is above 0.5 (inference path)."""
    shares: list[list[float]] = [[] for _ in model.scorers]
    hooks = [s.register_forward_hook(lambda _m, _i, out, k=k: shares[k].append(float((out[..., 0] > out[..., 1])
                                                                                        .float().mean())))
             for k, s in enumerate(model.scorers)]
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], 250):
                model(x[i:i + 250])
    finally:
        for h in hooks:
            h.remove()
    return [round(sum(s) / len(s), 4) for s in shares]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=0.15)
    ap.add_argument("--train", type=int, default=0, help="training images (0: all 60,000)")
    ap.add_argument("--limit", type=int, default=2000, help="test images (0: all 10,000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", default=None, help="a trained DynamicViT state dict (.safetensors) to continue")
    args = ap.parse_args()
    start = load_file(args.start) if args.start else None
    tag = f"from {Path(args.start).name} (sha256 {sha256(Path(args.start))[:8]})" if args.start else \
        "from the dense fmnist-vit, fresh scorers"
    torch.set_num_threads(args.threads)
    wl = load("fmnist-vit")
    dense = wl.model.eval()
    limit = args.limit or None
    dense_top1 = wl.evaluate(dense, limit=limit)["top1"]
    x_test = normalize(load_fashion_mnist("test")[0][:limit or 10000])
    x, y = _fmnist(args.train or None)
    x1 = (wl.example_inputs[0][:1],)
    rows, raw = [["dense", "-", 1.0, dense_top1, 0.0, "-", "-", "-"]], {}
    for sampling in DynamicViT.SAMPLINGS:
        torch.manual_seed(args.seed)
        model = DynamicViT(load("fmnist-vit").model, stages=STAGES, keep=KEEP, sampling=sampling)
        if start is not None:
            model.load_state_dict(start)
        folder = CACHE / (f"{sampling}-e{args.epochs:g}-n{x.shape[0]}-seed{args.seed}"
                          + (f"-{sha256(Path(args.start))[:12]}" if args.start else ""))
        t0 = time.time()
        hist = fit_dynamic(model, _loader(x, y, BATCH, True), epochs=args.epochs, lr=LR, backbone_lr=BACKBONE_LR,
                           teacher=dense, steps_per_epoch=x.shape[0] // BATCH, seed=args.seed,
                           checkpoint_dir=str(folder), checkpoint_every=100, resume=latest(folder) is not None,
                           desc=f"DynamicViT {sampling}")
        minutes = round((time.time() - t0) / 60, 1)
        top1 = wl.evaluate(model, limit=limit)["top1"]
        tail = hist[-50:]
        kept = [round(sum(h[f"kept{i + 1}"] for h in tail) / len(tail), 3) for i in range(len(STAGES))] if tail \
            else []
        sure = decided(model, x_test)
        rows.append([sampling, f"{args.epochs:g} epoch, {x.shape[0] // 1000}k", round(count_macs(model, x1) /
                     count_macs(dense, x1), 4), top1, round(100 * (top1 - dense_top1), 2),
                     "/".join(map(str, kept)), "/".join(map(str, sure)), minutes])
        raw[sampling] = {"steps": hist.result.steps, "resumed_from": hist.result.resumed_from,
                         "last_parts": hist[-1] if hist else {}, "kept_in_training": kept, "decided": sure}
        print(rows[-1], flush=True)
    write_result(NAME + ("_continued" if args.start else ""),
                 "DynamicViT on fmnist-vit: the paper's per-token Gumbel decisions against Gumbel-top-k"
                 + (", continuing a trained checkpoint" if args.start else ""),
                 ["sampling", "training", "MACs ratio", "top1", "change (pts)", "kept in training (stages 1/2/3)",
                  "p>0.5 at inference (stages 1/2/3)", "train wall min"], rows,
                 notes=(f"Both runs {tag}; scorers before blocks {STAGES} (keep "
                        f"{KEEP}: 196/137/96/67 patch tokens at inference), seed {args.seed}; fit_dynamic on the zoo "
                        f"recipe's objective (scorers lr {LR:g}, whole backbone {BACKBONE_LR:g}, AdamW warm-up + "
                        f"cosine, CE + 0.5 KL + 0.5 token distillation + 2.0 keep-ratio), {args.epochs:g} epoch(s) "
                        f"over {x.shape[0]} training images (shift+flip, batch {BATCH}), {args.threads} threads. "
                        f"Top-1 of the top-k inference path on {'the first ' + str(limit) if limit else 'all 10,000'}"
                        " test images. 'kept in training': share of the patch tokens kept after each stage, last 50 "
                        "steps (targets 0.7/0.49/0.343). 'p>0.5 at inference': share of the tokens entering each "
                        "stage that the scorer alone would keep (keep-probability above 0.5), on the same test "
                        "images."),
                 setup={"threads": args.threads, "eval_subset": limit or 10000, "epochs": args.epochs,
                        "train_images": int(x.shape[0]), "batch": BATCH, "seed": args.seed, "start": tag}, raw=raw)


if __name__ == "__main__":
    main()
