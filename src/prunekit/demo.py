"""The main job: load the reference models, measure them dense, run every compression method at a
sensible default, and write a report (markdown table + PNG plot) under ``runs/<timestamp>/``.

Each step works on a deep copy of the dense model, so every row is compared against the same
dense baseline. A method that fails is reported as failed in the table, never hidden.

>>> rows = run_demo(models=("fmnist-resnet",), methods=("dense",), limit=64)   # doctest: +SKIP
"""
from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from prunekit.measure import (
    THROUGHPUT_BATCH,
    count_macs,
    count_nonzero_params,
    count_params,
    layer_widths,
    paired_timings,
)
from prunekit.report import write_report
from prunekit.zoo import ENTRIES, NAMES, Workload, load, read_manifest

__all__ = ["Step", "STEPS", "run_demo", "vision_calib"]

# samples per model for the task metric in the demo (the benchmarks use the full splits): each ZooEntry's demo_limit
LIMITS = {name: e.demo_limit for name, e in ENTRIES.items()}
# the models the demo measures; a variant (a compressed form of one of them, e.g. fmnist-vit-dynamic) is a row
DEMO_MODELS = tuple(name for name in NAMES if ENTRIES[name].variant_of is None)


def vision_calib(n: int = 256, batch: int = 64) -> list[tuple[torch.Tensor]]:
    """Calibration batches from the Fashion-MNIST *train* split (disjoint from the eval split)."""
    from prunekit.data import load_fashion_mnist, normalize
    x, _ = load_fashion_mnist("train")
    return [(normalize(x[i:i + batch]),) for i in range(0, n, batch)]


def _calib(wl: Workload):
    if wl.name == "minilm":
        from prunekit.zoo.minilm import calibration_batches
        return calibration_batches(128, 32)
    return vision_calib()


@dataclass(frozen=True)
class Step:
    """One compression method applied to one model: ``apply(model, workload) -> model``; ``family``
    groups methods in the report's plots (one marker, colour and Pareto front per family)."""

    model: str
    method: str
    apply: Callable[[torch.nn.Module, Workload], torch.nn.Module]
    family: str = ""
    needs: str = ""  # a zoo variant the step loads: the step runs only where its checkpoint is shipped

    def __post_init__(self):
        if not self.family:
            from prunekit.report import family_of
            object.__setattr__(self, "family", family_of({"method": self.method}))


def _prune(finetune_epochs: float = 0.0, **kw):
    """Structured pruning; with ``finetune_epochs``, then the built-in fine-tune distilled from the dense model."""
    def apply(m, wl):
        import prunekit
        prunekit.prune(m, wl.example_inputs, **kw)
        if finetune_epochs:
            from prunekit.zoo.finetune import finetune
            finetune(m, wl.name, finetune_epochs, teacher=wl.model)
        return m
    return apply


def _sparsify(sparsity: float, method: str = "magnitude", pattern: str = "unstructured"):
    def apply(m, wl):
        import prunekit
        prunekit.sparsify(m, sparsity, criterion=method, pattern=pattern,
                          calib=_calib(wl) if method == "wanda" else None)
        prunekit.finalize(m)
        return m
    return apply


def _gradual(sparsity: float, epochs: float, ramp: float = 0.5):
    """Gradual magnitude pruning to ``sparsity`` during ``epochs`` of the built-in fine-tune, then finalize."""
    def apply(m, wl):
        import prunekit
        from prunekit.zoo.finetune import finetune, finetune_steps
        pruner = prunekit.GradualPruner(m, sparsity, end_step=max(2, int(finetune_steps(epochs) * ramp)), every=5)
        finetune(m, wl.name, epochs, on_step=lambda s: pruner.step())
        prunekit.finalize(m)
        return m
    return apply


def _slimming(epochs: float, strength: float = 1e-4, **kw):
    """Network Slimming: half the epochs with the L1 penalty, a bn_scale cut, half as fine-tune."""
    def apply(m, wl):
        import prunekit
        from prunekit.zoo.finetune import finetune
        finetune(m, wl.name, epochs / 2, regularizer=prunekit.slimming_penalty(m, strength))
        prunekit.prune(m, wl.example_inputs, criterion="bn_scale", **kw)
        finetune(m, wl.name, epochs / 2, seed=1)
        return m
    return apply


def _iterative(rounds: int, epochs: float, **kw):
    """Structured pruning in ``rounds`` cuts with ``epochs / rounds`` of the built-in fine-tune after each."""
    def apply(m, wl):
        import prunekit
        from prunekit.zoo.finetune import finetune
        prunekit.prune_iteratively(m, wl.example_inputs, rounds=rounds,
                                   train=lambda model, k: finetune(model, wl.name, epochs / rounds, seed=k), **kw)
        return m
    return apply


def _drop(n: int):
    def apply(m, wl):
        import prunekit
        prunekit.drop_layers(m, n=n, calib=_calib(wl))
        return m
    return apply


def _merge(r):
    def apply(m, wl):
        from prunekit import tokens
        tokens.merge(m, r=r)
        return m
    return apply


def _merge_local(windows: int = 0, tubes: int = 0, r=0, video: str = "tubes"):
    """merge_dense (``windows``) or merge_video (``tubes``, or ``video="saliency"`` with its defaults): a local
    or early stage, then global ToMe ``r``."""
    def apply(m, wl):
        from prunekit import tokens
        if windows:
            return tokens.merge_dense(m, windows=windows, r=r)
        if video == "saliency":
            return tokens.merge_video(m, method="saliency", r=r)
        return tokens.merge_video(m, tubes=tubes, r=r)
    return apply


def _variant(name: str):
    """A shipped zoo variant of the row's model (e.g. the trained DynamicViT), measured against that model."""
    def apply(m, wl):
        return load(name).model
    return apply


def _decreasing(r: int):
    from prunekit.tokens import decreasing
    return decreasing(r)


STEPS: tuple[Step, ...] = (
    Step("fmnist-resnet", "structured: 50% MACs (l2, one-shot)", _prune(target_macs=0.5)),
    Step("fmnist-resnet", "structured: 50% MACs (l2) + 0.2-epoch distilled fine-tune",
         _prune(0.2, target_macs=0.5)),
    Step("fmnist-resnet", "sparsity 70% magnitude", _sparsify(0.7)),
    Step("fmnist-resnet", "during training: sparsity 0->90% gradual over a 0.2-epoch fine-tune", _gradual(0.9, 0.2)),
    Step("fmnist-resnet", "during training: slimming 0.1 epoch, bn_scale cut to 50% MACs, 0.1-epoch fine-tune",
         _slimming(0.2, target_macs=0.5)),
    Step("fmnist-resnet", "during training: 50% MACs in 2 cuts, 0.1-epoch fine-tune after each",
         _iterative(2, 0.2, target_macs=0.5)),
    Step("fmnist-vit", "structured: ratio 0.3, channels+heads (l2, one-shot)", _prune(ratio=0.3)),
    Step("fmnist-vit", "sparsity 50% magnitude", _sparsify(0.5)),
    Step("fmnist-vit", "drop 2 of 12 blocks", _drop(2)),
    Step("fmnist-vit", "ToMe r=8", _merge(8)),
    Step("fmnist-vit", "DynamicViT keep 0.7 at blocks 3/6/9 (shipped fmnist-vit-dynamic)",
         _variant("fmnist-vit-dynamic"), needs="fmnist-vit-dynamic"),
    Step("mosaic-segvit", "ToMe r=12", _merge(12)),
    Step("mosaic-segvit", "local-then-global: 20 windows + ToMe decreasing r=10", _merge_local(20, r=_decreasing(10))),
    Step("mosaic-det", "ToMe r=19", _merge(19)),
    Step("mosaic-det", "local-then-global: 20 windows + ToMe decreasing r=4", _merge_local(20, r=_decreasing(4))),
    Step("motion-vivit", "ToMe r=12", _merge(12)),
    Step("motion-vivit", "time tubes 30 + ToMe r=8", _merge_local(tubes=30, r=8)),
    Step("motion-vivit-pan", "time tubes 30 + ToMe r=16", _merge_local(tubes=30, r=16)),
    Step("motion-vivit-pan", "saliency merging (100 background tokens in block 0) + ToMe r=13",
         _merge_local(r=13, video="saliency")),
    Step("minilm", "structured: 25% heads", _prune(ratio=0.25, units=("heads",))),
    Step("minilm", "sparsity 50% wanda", _sparsify(0.5, "wanda")),
    Step("minilm", "drop 2 of 6 blocks", _drop(2)),
)


def _row(step: Step | None, wl: Workload, model: torch.nn.Module, limit: int | None) -> dict:
    model.eval()
    metric = wl.evaluate(model, limit=limit)
    return {"model": wl.name, "method": step.method if step else "dense", "family": step.family if step else "dense",
            "params": count_params(model), "nonzero_params": count_nonzero_params(model),
            "macs": count_macs(model, wl.example_inputs), **paired_timings(wl.model, model, wl.example_inputs),
            "threads": torch.get_num_threads(), "metric_name": wl.metric_key, "metric": metric.get(wl.metric_key),
            "metric_all": metric, "eval_samples": limit,
            "layers": layer_widths(wl.model, model) if step else []}


def run_demo(models: tuple[str, ...] = DEMO_MODELS, methods: tuple[str, ...] | None = None,
             limit: int | None = None, out_root: Path = Path("runs")) -> tuple[list[dict], Path]:
    """Run the demo; returns the rows and the path of the markdown report."""
    available = set(read_manifest()) | {"minilm"}
    todo = [m for m in models if m in available]
    steps = [s for s in STEPS if s.model in todo and (methods is None or s.method in methods)
             and (not s.needs or s.needs in available)]
    rows: list[dict] = []
    bar = tqdm(total=len(todo) + len(steps), desc="demo", file=sys.stderr)
    t0 = time.time()
    for name in todo:
        wl = load(name)
        lim = limit or LIMITS.get(name)
        bar.set_postfix_str(f"{name}: dense")
        rows.append(_row(None, wl, wl.model, lim))
        bar.update(1)
        for step in (s for s in steps if s.model == name):
            bar.set_postfix_str(f"{name}: {step.method}")
            try:
                model = step.apply(copy.deepcopy(wl.model), wl)
                rows.append(_row(step, wl, model, lim))
            except Exception as e:  # noqa: BLE001 - a failed method is reported, not hidden
                rows.append({"model": name, "method": step.method, "error": f"{type(e).__name__}: {e}"[:200]})
            bar.update(1)
    bar.close()
    missing = [m for m in models if m not in available]
    header = (f"Latency: one forward of the workload's example batch (8 images, clips or sentences); throughput: "
              f"images/s at batch {THROUGHPUT_BATCH} (the example batch repeated). Each row's dense and compressed "
              f"times come from one run, the two models timed in 3 interleaved rounds, and its speed-ups are "
              f"the ratios of those times. {torch.get_num_threads()} threads; metric on the first N eval samples "
              f"(N per model: {LIMITS}); total {time.time() - t0:.0f} s."
              + (f" Not run (no shipped checkpoint): {', '.join(missing)}." if missing else ""))
    out = Path(out_root) / time.strftime("%Y%m%d-%H%M%S")
    return rows, write_report(rows, out, header)
