"""What the subcommands share: resolving a model argument and printing results."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunekit.zoo import NAMES, Workload
from prunekit.zoo import load as load_zoo

__all__ = ["resolve_model", "print_result", "compare", "add_measure_args"]


def add_measure_args(p) -> None:
    """The options every measuring subcommand takes: ``--json``, ``--limit N``, ``--repeats N``."""
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N eval samples only")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per latency measurement")


def require_finetune(command: str, flag: str, base: str, instead: str) -> None:
    """Exit, naming the fix, unless zoo model ``base`` has the built-in fine-tune that ``flag`` trains with."""
    from prunekit.zoo.finetune import FINETUNE_LR
    if base not in FINETUNE_LR:
        raise SystemExit(f"prunekit {command}: {flag} trains with the built-in fine-tune, which exists for "
                         f"{sorted(FINETUNE_LR)}, not {base!r}; {instead} instead")


def resolve_model(spec: str) -> Workload:
    """A zoo name, ``timm:<name>`` (random weights offline unless cached) or a saved model path."""
    if spec in NAMES:
        return load_zoo(spec)
    if spec.startswith("timm:"):
        import timm
        import torch
        model = timm.create_model(spec[5:], pretrained=False).eval()
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        return Workload(spec, model, (torch.randn(1, *size),), lambda m, limit=None: {}, "timm", "")
    if Path(spec).exists():
        import prunekit
        model = prunekit.load(spec)
        meta = getattr(model, "prunekit_meta", {}) or {}
        base = meta.get("zoo")
        if base in NAMES:
            wl = load_zoo(base)
            return Workload(spec, model.eval(), wl.example_inputs, wl.evaluate, wl.task, wl.metric_key, meta)
        raise SystemExit(f"{spec}: saved model has no zoo workload recorded; profile it from Python instead")
    raise SystemExit(f"unknown model {spec!r}: use a zoo name ({', '.join(NAMES)}), timm:<name> or a saved path")


def compare(before: dict, after: dict) -> dict:
    """The ``profile`` shape for the compressed model, with ``dense`` and the ratios attached."""
    out = dict(after)
    out["dense"] = before
    out["ratios"] = {
        "params": round(after["params"] / before["params"], 4),
        "macs": round(after["macs"] / before["macs"], 4),
        "speedup": round(before["latency_ms"] / after["latency_ms"], 3),
    }
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and value > 10_000:
        return f"{value:,}"
    return str(value)


def print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:>20}: {_fmt(v) if not isinstance(v, dict) else json.dumps(v)}")
        else:
            print(f"{key:>22}: {_fmt(value)}")
