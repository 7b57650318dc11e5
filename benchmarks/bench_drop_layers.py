"""Drop whole blocks: ShortGPT block influence vs dropping the last blocks vs a random choice.

minilm (all-MiniLM-L6-v2, 6 blocks): drop 2; fidelity and retrieval_top1 on corpus[:1000] against
the dense model, calibration on corpus[2000:2256] (disjoint). fmnist-vit (12 blocks): drop 2 and 4;
top-1 on the first 2000 test images, calibration on 256 training images. Latency is the median of
one forward pass, dense vs dropped, measured in the same run at the stated batch and thread count.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_drop_layers.py [--models minilm fmnist-vit]
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
from collections.abc import Callable
from typing import Any

import torch
from common import RESULTS, write_result
from torch import nn

from prunekit.measure import count_params, measure_latency
from prunekit.structured.blocks import drop_layers

NAME = "structured_drop_layers"
COLUMNS = ["model", "blocks dropped", "criterion", "removed", "metric", "value", "retrieval_top1",
           "params", "latency_ms", "speedup"]


def random_importance(seed: int) -> Callable[[nn.Module, list[str]], list[float]]:
    def random_order(model: nn.Module, paths: list[str]) -> list[float]:
        rng = random.Random(seed)
        return [rng.random() for _ in paths]
    return random_order


def paired_latency(dense: nn.Module, pruned: nn.Module, inputs: Any, threads: int, repeats: int,
                   rounds: int = 5) -> tuple[dict, dict]:
    """Dense and pruned latency measured in alternating rounds (the machine is shared), median of rounds."""
    res: dict[str, list[dict]] = {"dense": [], "pruned": []}
    for _ in range(rounds):
        for key, model in (("dense", dense), ("pruned", pruned)):
            res[key].append(measure_latency(model, inputs, warmup=1, repeats=repeats, num_threads=threads))
    out = []
    for key in ("dense", "pruned"):
        meds = [r["latency_ms"] for r in res[key]]
        out.append({**res[key][0], "latency_ms": round(statistics.median(meds), 3), "round_medians_ms": meds,
                    "repeats": repeats * rounds})
    return out[0], out[1]


def run_workload(label: str, model: nn.Module, calib: list[Any], latency_inputs: Any, evaluate: Callable,
                 metric: str, drops: tuple[int, ...], threads: int, repeats: int,
                 seeds: tuple[int, ...]) -> tuple[list[list], dict]:
    rows, raw = [], {}
    dense_metric = evaluate(model)
    dense_params = count_params(model)
    rows.append([label, 0, "dense", "-", metric, dense_metric[metric], dense_metric.get("retrieval_top1", ""),
                 dense_params, "", ""])
    raw["dense"] = {"metric": dense_metric, "params": dense_params}
    for n in drops:
        methods: list[tuple[str, Any]] = [("block_influence", "block_influence"),
                                          ("block_influence, one at a time", "iterative"), ("last", "last")]
        methods += [(f"random (seed {s})", random_importance(s)) for s in seeds]
        rand_vals = []
        for name, imp in methods:
            pruned = copy.deepcopy(model)
            if imp == "iterative":  # ShortGPT scores re-measured after each removal
                removed_paths = []
                for _ in range(n):
                    step = drop_layers(pruned, n=1, calib=calib)
                    removed_paths.append(step.removed_paths[0])
                res = step
            else:
                res = drop_layers(pruned, n=n, criterion=imp, calib=calib if imp == "block_influence" else None)
                removed_paths = res.removed_paths
            m = evaluate(pruned)
            row = [label, n, name, " ".join(p.rsplit(".", 1)[-1] for p in removed_paths), metric, m[metric],
                   m.get("retrieval_top1", ""), res.params_after, "", ""]
            entry = {"removed": removed_paths, "scores": dict(zip(res.blocks, res.scores, strict=True)),
                     "metric": m, "params": res.params_after}
            if imp == "block_influence":  # every n-block drop has the same shapes: time one of them
                dense_lat, lat = paired_latency(model, pruned, latency_inputs, threads, repeats)
                row[-2:] = [lat["latency_ms"], round(dense_lat["latency_ms"] / lat["latency_ms"], 3)]
                rows[0][-2] = dense_lat["latency_ms"]
                entry["latency"], entry["dense_latency"] = lat, dense_lat
            rows.append(row)
            raw[f"drop{n}/{name}"] = entry
            if name.startswith("random"):
                rand_vals.append(m[metric])
            print(row, flush=True)
        raw[f"drop{n}/random_mean"] = statistics.mean(rand_vals)
    return rows, raw


def prepare(name: str, vit_limit: int) -> tuple[nn.Module, list[Any], Any, Callable, str, tuple[int, ...], dict]:
    """(model, calib batches, latency inputs, evaluate, metric key, block counts to drop, setup) of ``name``."""
    from prunekit.zoo import load
    wl = load(name)
    if name == "minilm":
        from prunekit.zoo.minilm import calibration_batches
        ids = wl.example_inputs["input_ids"]
        setup = {"minilm_eval": "corpus[:1000]", "minilm_calib": "corpus[2000:2256], 8 batches of 32",
                 "minilm_latency_batch": int(ids.shape[0]), "minilm_latency_seq_len": int(ids.shape[1])}
        return (wl.model, calibration_batches(n=256, batch=32), wl.example_inputs, lambda m: wl.evaluate(m),
                "fidelity", (2,), setup)
    from prunekit.data import load_fashion_mnist, normalize
    x_train, _ = load_fashion_mnist("train")
    calib = [(normalize(x_train[i:i + 64]),) for i in range(0, 256, 64)]
    setup = {"vit_eval": f"Fashion-MNIST test[:{vit_limit}]",
             "vit_calib": "Fashion-MNIST train[:256], 4 batches of 64", "vit_latency_batch": 64}
    return (wl.model, calib, (normalize(x_train[-64:]),), lambda m: wl.evaluate(m, limit=vit_limit), "top1",
            (2, 4), setup)


def latency_only(name: str, doc: dict, threads: int, repeats: int, vit_limit: int) -> None:
    """Re-time dense vs block-influence-dropped ``name`` and update those cells of an existing result."""
    model, calib, inputs, _, _, drops, _ = prepare(name, vit_limit)
    for n in drops:
        pruned = copy.deepcopy(model)
        drop_layers(pruned, n=n, calib=calib)
        dense_lat, lat = paired_latency(model, pruned, inputs, threads, repeats)
        for row in doc["table"]["rows"]:
            if row[0] == name and row[2] == "dense":
                row[-2] = dense_lat["latency_ms"]
            if row[0] == name and row[1] == n and row[2] == "block_influence":
                row[-2:] = [lat["latency_ms"], round(dense_lat["latency_ms"] / lat["latency_ms"], 3)]
                print(row, flush=True)
        entry = doc["raw"][name][f"drop{n}/block_influence"]
        entry["latency"], entry["dense_latency"] = lat, dense_lat


def vit_available() -> bool:
    from prunekit.zoo import read_manifest
    try:
        return "fmnist-vit" in read_manifest()
    except Exception:
        return False


def notes_text(seeds: int, vit_skipped: bool = False, vit_limit: int = 2000) -> str:
    skipped = " fmnist-vit skipped: no checkpoint in the zoo manifest yet." if vit_skipped else ""
    return ("ShortGPT block influence (1 - cos(in, out), mask-aware over calibration tokens) vs dropping "
            f"the last blocks vs random choices ({seeds} seeds; random_mean in raw). `value` is the model's "
            "metric (minilm: fidelity = mean cosine to dense embeddings; fmnist-vit: top-1). Latency: one "
            "forward, dense and dropped timed in alternating rounds in the same run, median of round "
            f"medians (round medians in raw). fmnist-vit top-1 on the first {vit_limit} test images." + skipped)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "fmnist-vit"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--vit-limit", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3, help="random choices per drop count")
    ap.add_argument("--latency-only", action="store_true",
                    help="re-time dense vs dropped for --models in the existing result, keep the metrics")
    args = ap.parse_args()
    torch.manual_seed(0)

    old = json.loads((RESULTS / f"{NAME}.json").read_text()) if (RESULTS / f"{NAME}.json").exists() else None
    if args.latency_only:
        if old is None:
            raise SystemExit("no existing result to update; run without --latency-only first")
        for model in args.models:
            latency_only(model, old, args.threads, args.repeats, args.vit_limit)
        write_result(NAME, old["title"], old["table"]["columns"], old["table"]["rows"],
                     notes=notes_text(args.seeds, "fmnist-vit" not in old["raw"], args.vit_limit),
                     setup={**old["setup"], "threads": args.threads, "latency_repeats": args.repeats},
                     raw=old["raw"])
        return
    rows, raw = [], {}
    setup = {"threads": args.threads, "latency_repeats": args.repeats,
             "batch_size": "32 sentences (minilm), 64 images (fmnist-vit)"}
    vit_skipped = False
    for model in ("minilm", "fmnist-vit"):
        if model not in args.models:
            if old:  # keep the other model's rows from the previous run
                rows += [r for r in old["table"]["rows"] if r[0] == model]
                raw.update({k: v for k, v in old["raw"].items() if k == model})
                setup.update({k: v for k, v in old["setup"].items() if k.startswith(model.split("-")[-1])})
            continue
        if model == "fmnist-vit" and not vit_available():
            vit_skipped = True
            continue
        net, calib, inputs, evaluate, metric, drops, st = prepare(model, args.vit_limit)
        r, rw = run_workload(model, net, calib, inputs, evaluate, metric, drops, args.threads, args.repeats,
                             tuple(range(args.seeds)))
        rows += r
        raw[model] = rw
        setup.update(st)
    write_result(NAME, "Drop whole blocks (drop_layers): block influence vs last vs random", COLUMNS, rows,
                 notes=notes_text(args.seeds, vit_skipped, args.vit_limit), setup=setup, raw=raw)


if __name__ == "__main__":
    main()
