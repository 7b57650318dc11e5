"""What the subcommands share: resolving a model argument and printing results."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prunekit.errors import PruningError
from prunekit.zoo import NAMES, Workload
from prunekit.zoo import load as load_zoo

__all__ = ["resolve_model", "print_result", "compare", "measured", "add_measure_args", "origin_meta", "JSON_KEYS",
           "row_json"]


def add_measure_args(p) -> None:
    """The options every measuring subcommand takes: ``--json``, ``--limit N``, ``--repeats N``."""
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N eval samples only")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per round of a latency measurement")
    p.add_argument("--throughput-batch", type=int, default=32, metavar="N",
                   help="batch for the images/s figures (0: latency only)")


class _OldName(argparse.Action):
    """Stores the value; an old spelling of the flag still works and says which one replaces it."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string != self.option_strings[0]:
            print(f"prunekit: {option_string} is deprecated, use {self.option_strings[0]} (the same values)",
                  file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_criterion(p, old: str, **kw) -> None:
    """``--criterion`` (the scorer, one name in every verb and the Python API); ``old`` still works."""
    p.add_argument("--criterion", old, dest="criterion", action=_OldName, **kw)


def require_finetune(command: str, flag: str, base: str, instead: str) -> None:
    """Exit, naming the fix, unless zoo model ``base`` has the built-in fine-tune that ``flag`` trains with."""
    from prunekit.zoo.finetune import FINETUNE_LR
    if base not in FINETUNE_LR:
        raise SystemExit(f"prunekit {command}: {flag} trains with the built-in fine-tune, which exists for "
                         f"{sorted(FINETUNE_LR)}, not {base!r}; {instead} instead")


def _hf(path: str, meta: dict | None = None, model=None) -> Workload:
    """A Hugging Face sequence classifier (``from_pretrained``) with its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if model is None:
            model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    except OSError as e:
        raise PruningError(f"hf:{path}", "load the model", f"{str(e).splitlines()[0]} (give a local directory "
                           "written by save_pretrained, or a hub id with the hub reachable)") from None
    example = dict(tokenizer(["a short example sentence"], return_tensors="pt"))
    return Workload(f"hf:{path}", model, example, lambda m, limit=None: {}, "hf", "", {"tokenizer": tokenizer,
                                                                                        **(meta or {})})


def _saved_input(meta: dict) -> tuple:
    import torch
    return (torch.randn(1, *meta.get("input_size", (3, 224, 224))),)


def resolve_model(spec: str) -> Workload:
    """A zoo name, ``timm:<name>[@pretrained|@FILE]`` (:mod:`prunekit.cli.timm_spec`), ``hf:<dir or hub
    id>``, a plain directory holding ``config.json`` (a Hugging Face sequence classifier) or a saved
    prunekit file (``input_size`` in its
    metadata sets the example input; a file saved from ``hf:`` comes back with its tokenizer)."""
    if spec in NAMES:
        return load_zoo(spec)
    if spec.startswith("timm:"):
        from prunekit.cli.timm_spec import create_timm_model, parse_timm_spec
        model = create_timm_model(spec)
        if parse_timm_spec(spec)[1] is None:
            print(f"prunekit: {spec} has random weights; {spec}@pretrained loads timm's trained ones "
                  f"({spec}@FILE from a local file)", file=sys.stderr)
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        return Workload(spec, model, _saved_input({"input_size": size}), lambda m, limit=None: {}, "timm", "")
    if spec.startswith("hf:"):
        path = spec[3:]
        if spec == "hf:minilm":
            from prunekit.zoo.minilm import model_path
            path = model_path()
        return _hf(path)
    if Path(spec).is_dir() and (Path(spec) / "config.json").is_file():  # a save_pretrained directory
        return _hf(spec)
    if Path(spec).exists():
        import prunekit
        model = prunekit.load(spec)
        meta = getattr(model, "prunekit_meta", {}) or {}
        base = meta.get("zoo")
        if base in NAMES:
            wl = load_zoo(base)
            return Workload(spec, model.eval(), wl.example_inputs, wl.evaluate, wl.task, wl.metric_key, meta)
        if meta.get("hf"):
            return _hf(meta["hf"], meta, model.eval())
        return Workload(spec, model.eval(), _saved_input(meta), lambda m, limit=None: {}, "model", "", meta)
    raise PruningError(spec, "load the model", f"unknown model; use a zoo name ({', '.join(NAMES)}), timm:<name>, "
                       "hf:<dir or hub id> (or a save_pretrained directory) or the path of a saved prunekit file")


def origin_meta(wl: Workload) -> dict:
    """Where ``wl``'s model came from, saved with it so that later verbs can rebuild its inputs: the zoo
    name, the timm name, the Hugging Face directory (for its tokenizer), the input size, the classes."""
    saved = getattr(wl.model, "prunekit_meta", None) or {}
    meta = {k: saved[k] for k in ("zoo", "timm", "hf", "input_size", "classes") if k in saved}
    if wl.name in NAMES:
        meta["zoo"] = wl.name
    elif wl.name.startswith("timm:"):
        from prunekit.cli.timm_spec import parse_timm_spec
        meta["timm"] = parse_timm_spec(wl.name)[0]
        if isinstance(wl.example_inputs, tuple) and len(wl.example_inputs) == 1:
            meta.setdefault("input_size", list(wl.example_inputs[0].shape[1:]))
    elif wl.task == "hf":
        meta.setdefault("hf", wl.name[3:])
    return meta


JSON_KEYS = ("model", "method", "params", "macs", "latency_ms", "throughput", "speedup", "metric", "dense")


def _timed(doc: dict, latency_ms: float, throughput: float | None) -> dict:
    """``doc`` with its latency (and throughput) replaced by the paired run's; the lone run's spread goes."""
    out = {k: v for k, v in doc.items() if k not in ("latency_p10_ms", "latency_p90_ms", "repeats", "warmup")}
    out.update(latency_ms=latency_ms, throughput=throughput)
    return out


def compare(before: dict, after: dict, method: str, timing: dict) -> dict:
    """The ``--json`` shape every verb prints: the compressed model's ``model``, ``method``, ``params``,
    ``macs``, ``latency_ms``, ``throughput`` (images/s), ``speedup`` and ``metric``, the same keys for
    the model before under ``dense``, and ``ratios``. ``timing`` is :func:`prunekit.measure.paired_timings`
    of the two models, so the latencies, throughputs and speed-ups all come from one interleaved run.
    """
    dense = _timed(before, timing["dense_latency_ms"], timing.get("dense_throughput"))
    dense.update(method="dense", speedup=1.0, throughput_speedup=1.0 if timing.get("throughput") else None)
    out = _timed(after, timing["latency_ms"], timing.get("throughput"))
    out.update(method=method, speedup=timing["speedup"], throughput_speedup=timing.get("throughput_speedup"),
               batch_size=timing["batch_size"], throughput_batch=timing.get("throughput_batch"))
    out["dense"] = dense
    out["ratios"] = {"params": round(after["params"] / before["params"], 4),
                     "macs": round(after["macs"] / before["macs"], 4), "speedup": timing["speedup"],
                     "throughput_speedup": timing.get("throughput_speedup")}
    return out


def measured(wl: Workload, dense_model, before: dict, method: str, evaluate, args) -> dict:
    """Profile ``wl.model`` (compressed in place) and time it against ``dense_model`` in one run; the
    :func:`compare` shape with ``model`` set."""
    from prunekit.measure import paired_timings, profile
    after = profile(wl.model, wl.example_inputs, evaluate, repeats=1, warmup=0)
    timing = paired_timings(dense_model, wl.model, wl.example_inputs, repeats=args.repeats,
                            throughput_batch=args.throughput_batch)
    before = {**before, "model": wl.name}
    return {"model": wl.name, **compare(before, after, method, timing)}


def row_json(row: dict, dense: dict | None = None) -> dict:
    """A report row (``prunekit run`` / ``demo`` / ``compare``: one model timed against its dense model in
    one run) in the ``--json`` shape of every verb: ``model``, ``method``, ``params``, ``macs``,
    ``latency_ms``, ``throughput``, ``speedup``, ``metric`` and, given the dense row, ``dense``.

    >>> r = {"model": "m", "method": "prune", "params": 5, "macs": 9, "latency_ms": 2.0, "throughput": 50.0,
    ...      "speedup": 1.5, "metric_name": "top1", "metric": 0.9}
    >>> row_json(r)["metric"], sorted(set(JSON_KEYS) - set(row_json(r)))
    ({'top1': 0.9}, ['dense'])
    """
    metric = {row["metric_name"]: row["metric"]} if row.get("metric") is not None and row.get("metric_name") else {}
    out = {"model": row["model"], "method": row["method"], "params": row["params"], "macs": row["macs"],
           "latency_ms": row.get("latency_ms"), "throughput": row.get("throughput"), "speedup": row.get("speedup"),
           "metric": metric, "throughput_speedup": row.get("throughput_speedup"),
           "batch_size": row.get("batch_size"), "throughput_batch": row.get("throughput_batch")}
    if dense is not None:
        d = row_json(dense)
        d.update(latency_ms=row.get("dense_latency_ms", d["latency_ms"]),
                 throughput=row.get("dense_throughput", d["throughput"]), speedup=1.0)
        out["dense"] = d
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


def check_range(flag: str, value: float | None, lo: float, hi: float, lo_open: bool = False,
                hi_open: bool = False, command: str = "run") -> None:
    """Refuse ``value`` outside ``[lo, hi]`` (open ends as told) with one line naming ``flag``."""
    if value is None:
        return
    below = value <= lo if lo_open else value < lo
    above = value >= hi if hi_open else value > hi
    if below or above:
        span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise PruningError(f"{flag} {value:g}", command, f"give a value in {span}")


def check_out(path: str | None, command: str) -> None:
    """Make sure ``--out``'s folder exists or can be made, before any work is done."""
    if not path:
        return
    folder = Path(path).resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PruningError(f"--out {path}", command, f"cannot create the folder {folder} ({e.strerror}); "
                           "give a writable path") from None
    if Path(path).is_dir():
        raise PruningError(f"--out {path}", command, "is a directory; give a file path such as model.safetensors")
