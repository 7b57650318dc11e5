"""Token reduction on fmnist-vit: top-1 against MACs for ToMe, EViT, top-k drop and DynamicViT, one curve each.

Training-free reducers (no retraining, the shipped fmnist-vit):

- ``tome``: :func:`prunekit.tokens.merge` (bipartite merging, proportional attention);
- ``evit``: :func:`prunekit.tokens.evit` (keep the most attended tokens, fuse the rest into one);
- ``drop``: :func:`prunekit.tokens.drop` (keep the most attended tokens only).

Each runs at constant ``r`` per layer (``--rs``) and at DynamicViT's token counts (tokens removed after
the attention of blocks 2, 5, 8, so blocks 3-11 see 137 / 96 / 67 patch tokens). The DynamicViT point is
the top-1 of the trained model in ``benchmarks/results/dynamic_vit.json`` (read, not retrained here; same
test images) at the MACs of its gathered inference path, counted here (they do not depend on training).
The fine-tuned EViT point is read the same way from ``evit_finetune.json`` when it used the same test images.
MACs per image from torch.utils.flop_counter. Top-1 on the first ``--limit`` test images. Writes the JSON
and ``token_pruning_curve.png`` beside it.

    python benchmarks/bench_token_pruning_curve.py [--limit 2000] [--rs 4 8 12 16]   # --limit 0: all 10,000
"""
from __future__ import annotations

import argparse
import copy
import json

import torch
from bench_dynamic_vit import KEEP, STAGES, removals
from common import RESULTS, write_result

import prunekit.tokens as tokens
from prunekit.measure import count_macs
from prunekit.zoo import load

NAME = "token_pruning_curve"
REDUCERS = {"tome": tokens.merge, "evit": tokens.evit, "drop": tokens.drop}


def plot(points: dict[str, list[tuple[float, float]]], dense: float, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    styles = {"tome": ("o-", "C0"), "evit": ("s-", "C1"), "drop": ("v-", "C2"), "dynamicvit": ("*", "C3"),
              "evit (fine-tuned)": ("D", "C1")}
    for name, pts in points.items():
        pts = sorted(pts)
        marker, colour = styles[name]
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker, color=colour, label=name,
                markersize=12 if name == "dynamicvit" else 8 if "fine-tuned" in name else 6)
    ax.plot([1.0], [100 * dense], "k*", markersize=12, label="dense")
    ax.set_xlabel("MACs (fraction of dense)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("fmnist-vit: token reduction, accuracy vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--rs", type=int, nargs="+", default=[4, 8, 12, 16])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dyn_doc = json.loads((RESULTS / "dynamic_vit.json").read_text())
    n_eval = args.limit or 10000
    if dyn_doc["setup"].get("eval_subset") != n_eval:
        raise SystemExit(f"dynamic_vit.json measured top-1 on {dyn_doc['setup'].get('eval_subset')} test images, "
                         f"this run on {n_eval}: run both with the same --limit")
    args.limit = args.limit or None
    wl = load("fmnist-vit")
    x1 = (wl.example_inputs[0][:1],)
    dense_macs = count_macs(wl.model, x1)
    dense = wl.evaluate(wl.model, limit=args.limit)["top1"]
    rows, points = [], {name: [] for name in REDUCERS}
    dyn_model = tokens.DynamicViT(copy.deepcopy(wl.model), STAGES, KEEP).eval()   # untrained: MACs, counts only
    dyn_counts = dyn_model.token_counts()   # 196/137/96/67
    dyn_macs = round(count_macs(dyn_model, x1) / dense_macs, 4)   # the gathered inference path
    schedules = [(f"r={r}", r) for r in args.rs] + [("DynamicViT's token counts", removals(dyn_counts))]
    for label, r in schedules:
        for name, patch in REDUCERS.items():
            m = patch(copy.deepcopy(wl.model), r=r, trace_source=True)
            macs = round(count_macs(m, x1) / dense_macs, 4)
            top1 = wl.evaluate(m, limit=args.limit)["top1"]
            final = tokens.last_info(m).tokens[-1]
            rows.append([name, label, final, macs, top1, round(100 * (top1 - dense), 2)])
            points[name].append((macs, top1))
            print(rows[-1], flush=True)
    dyn = next(r for r in dyn_doc["table"]["rows"] if r[0] == "dynamicvit")
    dyn_cols = dyn_doc["table"]["columns"]
    dyn_top1 = dyn[dyn_cols.index("top1")]   # its MACs are counted here, with today's attention counting
    dyn_dense = next(r for r in dyn_doc["table"]["rows"] if r[0] == "dense")[dyn_cols.index("top1")]
    source = "shipped fmnist-vit-dynamic" if dyn_doc["setup"].get("shipped") else "trained in dynamic_vit.json"
    rows.append([f"dynamicvit ({source})", "DynamicViT's token counts", 1 + dyn_counts[-1], dyn_macs,
                 dyn_top1,
                 round(100 * (dyn_top1 - dyn_dense), 2)])
    points["dynamicvit"] = [(dyn_macs, dyn_top1)]
    tuned_note = ""
    tuned_path = RESULTS / "evit_finetune.json"   # EViT fine-tuned (bench_evit_finetune.py)
    if tuned_path.exists():
        tuned_doc = json.loads(tuned_path.read_text())
        cols = tuned_doc["table"]["columns"]
        tuned = next((r for r in tuned_doc["table"]["rows"] if r[0] == "evit (fine-tuned)"), None)
        if tuned is not None and tuned_doc["setup"].get("eval_subset") == n_eval:
            t_macs, t_top1 = tuned[cols.index("MACs ratio")], tuned[cols.index("top1")]
            rows.append(["evit (fine-tuned, evit_finetune.json)", "DynamicViT's token counts", 1 + dyn_counts[-1],
                         t_macs, t_top1, round(100 * (t_top1 - dense), 2)])
            points["evit (fine-tuned)"] = [(t_macs, t_top1)]
            tuned_note = (f" The evit (fine-tuned) row is read from evit_finetune.json ({tuned[1]}; its DynamicViT "
                          f"row is {tuned_doc['table']['rows'][1][0]}): {t_top1} at {t_macs} MACs.")
    plot(points, dense, RESULTS / f"{NAME}.png")
    same = {n: next(r for r in rows if r[0] == n and r[1].startswith("DynamicViT")) for n in REDUCERS}
    write_result(NAME, "fmnist-vit: ToMe, EViT, top-k drop and DynamicViT on one accuracy-vs-MACs curve",
                 ["method", "schedule", "tokens after the last block", "MACs ratio", "top1", "change (pts)"],
                 [["dense", "-", 197, 1.0, dense, 0.0], *rows],
                 notes=(f"Top-1 on {f'the first {n_eval}' if args.limit else 'all 10,000'} test images, no "
                        "retraining for tome / evit / drop (the "
                        "shipped fmnist-vit). Constant r removes r tokens after every block's attention; 'DynamicViT's "
                        f"token counts' removes {[r for r in removals(dyn_counts) if r]} after blocks "
                        f"{[s - 1 for s in STAGES]}. The dynamicvit row is read from "
                        f"dynamic_vit.json ({source}, same test images; its dense top-1 is "
                        f"{dyn_dense}). At DynamicViT's token counts: "
                        + ", ".join(f"{n} {same[n][4]} at {same[n][3]} MACs" for n in REDUCERS)
                        + f", dynamicvit {dyn_top1} at {dyn_macs} MACs.{tuned_note} Plot: {NAME}.png."),
                 setup={"threads": args.threads, "eval_subset": n_eval}, figure=f"{NAME}.png",
                 raw={"points": {k: list(map(list, v)) for k, v in points.items()}})


if __name__ == "__main__":
    main()
