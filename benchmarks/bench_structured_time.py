"""Time to analyse and prune timm CNNs and a ViT on the CPU, side by side with Torch-Pruning.

For each model, in one run and one process: prunekit's ``groups()`` and then ``prune(..., groups=g)``
(which reuses the trace), against Torch-Pruning's ``BasePruner`` construction (its dependency graph)
plus ``step()``. Both: one 224 px image (batch 1), ``ratio=0.3``, global scope, L2 magnitude, the
classifier left alone; Torch-Pruning is given the attention heads of ViTs (``num_heads``), as its
timm example does, and the attention modules' ``num_heads``/``head_dim``/``attn_dim`` are updated after its
step, so that its pruned model still runs. prunekit's ``prune()`` does more than Torch-Pruning's
``step()``: it also runs a checking forward and reports MACs before and after (counted on the trace
and checking passes). After one untimed warm-up of each, best of ``--repeats`` (default 3),
alternating the two, on a fresh copy of the model each time; 1 thread unless ``--threads``. Random
weights: the time does not depend on them.

    python benchmarks/bench_structured_time.py
    python benchmarks/bench_structured_time.py resnet50 --repeats 3

Torch-Pruning is optional (``pip install -e '.[bench]'``); without it the column reads "not installed".
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

import prunekit  # noqa: E402
from prunekit.measure import measure_latency  # noqa: E402

try:
    import torch_pruning as tp
except ImportError:  # optional: the comparison column is skipped
    tp = None

MODELS = ["resnet50", "convnext_tiny", "efficientnet_b0", "vit_base_patch16_224"]
RATIO = 0.3


def ours(model: torch.nn.Module, x: tuple) -> tuple[float, float, prunekit.PruneResult]:
    t0 = time.perf_counter()
    g = prunekit.groups(model, x)
    t1 = time.perf_counter()
    res = prunekit.prune(model, x, ratio=RATIO, importance="l2", scope="global", groups=g)
    return t1 - t0, time.perf_counter() - t1, res


def torch_pruning(model: torch.nn.Module, x: tuple) -> tuple[float, bool]:
    """Torch-Pruning 1.6: BasePruner (builds the dependency graph) + step(); whether the result still runs."""
    heads = {m.qkv: m.num_heads for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")}
    t0 = time.perf_counter()
    pruner = tp.pruner.BasePruner(model, x[0], importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=RATIO, global_pruning=True,
                                  ignored_layers=[model.get_classifier()], num_heads=heads)
    pruner.step()
    for m in model.modules():  # as Torch-Pruning's timm example does: the attention modules learn their new widths
        if getattr(m, "qkv", None) in heads:
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):  # recent timm reshapes to attn_dim
                m.attn_dim = m.head_dim * m.num_heads
    dt = time.perf_counter() - t0
    try:
        with torch.no_grad():
            runs = tuple(model(*x).shape) == (x[0].shape[0], model.num_classes)
    except Exception:  # noqa: BLE001 - reported as a column, not raised
        runs = False
    return dt, runs


def _tp_version() -> str:
    """The installed distribution's version (torch_pruning.__version__ lags behind it)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("torch-pruning")
    except PackageNotFoundError:
        return "(not installed)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=MODELS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows, raw = [], {}
    for name in args.models:
        torch.manual_seed(0)
        dense = timm.create_model(name, pretrained=False).eval()
        x = (torch.randn(1, 3, 224, 224),)
        fwd = measure_latency(dense, x, warmup=1, repeats=3)["latency_ms"] / 1e3
        best_g = best_p = best_tp = float("inf")
        tp_runs = None
        ours(copy.deepcopy(dense), x)  # warm-up: both libraries' first call pays one-off setup costs
        if tp is not None:
            torch_pruning(copy.deepcopy(dense), x)
        for _ in range(args.repeats):
            t_g, t_p, res = ours(copy.deepcopy(dense), x)
            if t_g + t_p < best_g + best_p:
                best_g, best_p = t_g, t_p
            if tp is not None:
                t_tp, tp_runs = torch_pruning(copy.deepcopy(dense), x)
                best_tp = min(best_tp, t_tp)
        total = best_g + best_p
        row = [name, round(fwd, 3), round(best_g, 2), round(best_p, 2), round(total, 2),
               round(best_tp, 2) if tp is not None else "not installed",
               round(total / best_tp, 2) if tp is not None else "-",
               round(res.macs_ratio, 3), round(res.params_ratio, 3),
               ("yes" if tp_runs else "no") if tp is not None else "-"]
        print(row, flush=True)
        rows.append(row)
        raw[name] = {"groups": len(res.decisions), "macs_before": res.macs_before, "macs_after": res.macs_after}
    short = [r[0] for r in rows if isinstance(r[6], float) and r[6] > 1]
    write_result("structured_time", "Time to analyse and prune on the CPU, prunekit vs Torch-Pruning",
                 ["model", "forward s", "groups() s", "prune(groups=) s", "prunekit s", "Torch-Pruning s",
                  "prunekit / TP", "MACs kept", "params kept", "TP model runs"], rows,
                 f"Batch 1 at 224 px, ratio {RATIO}, global L2 magnitude, {args.threads} thread(s), one warm-up each, "
                 f"then best of {args.repeats} alternating runs on fresh copies. "
                 "prunekit s = groups() + prune(groups=g), which includes a checking forward and the MAC counts; "
                 f"Torch-Pruning {_tp_version()} s = BasePruner(...) + step(). "
                 + (f"prunekit is slower on: {', '.join(short)}." if short else
                    "prunekit is no slower on any model." if tp is not None else ""),
                 setup={"batch_size": 1, "repeats": args.repeats}, raw=raw)


if __name__ == "__main__":
    main()
