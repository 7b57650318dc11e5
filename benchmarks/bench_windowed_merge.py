"""Token merging inside attention windows (Swin v1, SAM-style windowed ViT): MACs and CPU speed vs dense.

Random weights (no model hub here), so this measures speed and MACs only, plus how far the merged
model's output features move from the dense model's (cosine; with random weights tokens are less
alike than in a trained model, so this is a pessimistic proxy, not an accuracy). Models:

- timm ``swin_tiny_patch4_window7_224`` at 224 px (7x7 windows of 49 tokens), batch 8;
- a SAM-style encoder: timm ``VisionTransformerSAM`` at ViT-S width (384, 6 heads, 12 blocks), 448 px
  (28x28 patches, 14x14 windows of 196 tokens, global attention in blocks 2, 5, 8, 11, relative
  position bias), batch 2; its output is the neck's 256-channel feature map.

``tome``: ``r`` tokens are merged per window in every block (a global block merges the same share of
the whole grid). ``merge_dense``: first ``windows`` of each window's 2x2 neighbourhoods collapse into one
token each (local), then ``r`` pairs by bipartite matching (global within the window); each
``merge_dense`` row removes as many tokens per window as the ``tome`` row above it.

Timing: 1 thread, dense and merged timed in alternating rounds (``--rounds`` x ``--repeats``
forwards after a warm-up); throughput ratio = median of per-round dense/merged CPU-time ratios.

    python benchmarks/bench_windowed_merge.py [--rounds 5] [--repeats 2]
"""
from __future__ import annotations

import argparse

import timm
import torch
from bench_tome_timing import paired_rounds
from common import write_result

from prunekit import tokens
from prunekit.measure import count_macs

NAME = "windowed_merge"
COLUMNS = ["model", "method", "tokens merged away per window", "window tokens", "MACs ratio", "throughput ratio (cpu)",
           "cpu_ms/batch", "dense cpu_ms/batch", "feature cosine to dense (min over batch)"]


def models() -> list[tuple[str, torch.nn.Module, torch.Tensor, int, list[int]]]:
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", num_classes=0, global_pool="").eval()
    sam = timm.create_model("samvit_base_patch16", img_size=448, embed_dim=384, depth=12, num_heads=6, window_size=14,
                            global_attn_indexes=(2, 5, 8, 11), use_rel_pos=True, num_classes=0,
                            global_pool=None).eval()
    with torch.no_grad():   # relative position tables start at zero: give them values so they cost what they do
        for name, p in sam.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.02)
    return [("swin_tiny_patch4_window7_224", swin, torch.randn(8, 3, 224, 224), 49,
             [("tome", 8, 0), ("merge_dense", 2, 2), ("tome", 16, 0), ("merge_dense", 4, 4)]),
            ("samvit (ViT-S width, 448 px)", sam, torch.randn(2, 3, 448, 448), 196,
             [("tome", 49, 0), ("merge_dense", 13, 12), ("tome", 98, 0), ("merge_dense", 23, 25)])]


def patch(model: torch.nn.Module, method: str, r: int, windows: int) -> None:
    if method == "tome":
        tokens.merge(model, r=r)
    else:
        tokens.merge_dense(model, windows=windows, r=r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, model, x, area, variants in models():
        with torch.no_grad():
            dense_out = model(x).flatten(1)
        dense_macs = count_macs(model, (x[:1],))
        sims, macs = {}, {}
        for v in variants:
            patch(model, *v)
            with torch.no_grad():
                sims[v] = float(torch.nn.functional.cosine_similarity(model(x).flatten(1), dense_out).min())
            macs[v] = count_macs(model, (x[:1],)) / dense_macs
            tokens.unpatch(model)
        timing = paired_rounds(model, (x,), {v: (lambda v=v, m=model: patch(m, *v)) for v in variants},
                               lambda m=model: tokens.unpatch(m), args.rounds, args.repeats)
        for v in variants:
            t = timing[v]
            method, r, windows = v
            what = f"r={r}" if method == "tome" else f"{windows} 2x2 groups + r={r}"
            rows.append([name, method, f"{r + 3 * windows} ({what})", area, round(macs[v], 4),
                         round(t["ratio_cpu"], 3), round(sorted(t["cpu_ms"])[len(t["cpu_ms"]) // 2], 1),
                         round(sorted(t["dense_cpu_ms"])[len(t["dense_cpu_ms"]) // 2], 1), round(sims[v], 4)])
            print(rows[-1], flush=True)
    write_result(NAME, "Token merging inside attention windows (Swin, SAM-style ViT): MACs and CPU speed",
                 COLUMNS, rows,
                 notes=("Random weights (speed and MACs only; the cosine is a pessimistic proxy, not an accuracy). "
                        "Each block merges its tokens per window (tome: bipartite matching on the normalised tokens; "
                        "merge_dense: the most alike 2x2 neighbourhoods first, then bipartite pairs), runs "
                        "attention with the window's relative position bias read at one position of each merged "
                        "token and proportional attention, un-merges, and runs its MLP on the same merged windows. "
                        "1 thread, "
                        f"{args.rounds} alternating rounds x {args.repeats} forwards, batch 8 (Swin) / 2 (SAM)."),
                 setup={"threads": 1, "rounds": args.rounds, "repeats": args.repeats})


if __name__ == "__main__":
    main()
