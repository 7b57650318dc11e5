"""onnxruntime latency, dense vs compressed, next to PyTorch eager's, for the models prunekit produces.

For each pair, both models are exported with :func:`prunekit.export_onnx` (each file checked in
onnxruntime against PyTorch) and timed on the zoo's example batch: onnxruntime CPU
(``intra_op_num_threads = --threads``) and PyTorch eager (``torch.set_num_threads``), ``--warmup``
runs then the median of ``--repeats``. Pairs: structured pruning to 50% MACs (fmnist-resnet,
fmnist-vit), ToMe (fmnist-vit at 60% MACs), local-then-global merging (mosaic-segvit, 20 windows
then ToMe r=10) and time tubes (motion-vivit, 30 tubes then r=8). The goal: each onnxruntime
speed-up is at least 90% of PyTorch's.

    python benchmarks/bench_export_ort.py [--threads 1] [--repeats 20]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

import prunekit  # noqa: E402
from prunekit.export import export_onnx  # noqa: E402
from prunekit.zoo import load  # noqa: E402


def _median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _ort_ms(path: Path, inputs: tuple, threads: int, warmup: int, repeats: int) -> float:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(s.get_inputs(), inputs, strict=True)}
    return _median_ms(lambda: s.run(None, feeds), warmup, repeats)


def _torch_ms(model, inputs: tuple, warmup: int, repeats: int) -> float:
    with torch.no_grad():
        return _median_ms(lambda: model(*inputs), warmup, repeats)


def _compress(name: str, how: str, model, inputs):
    from prunekit.tokens import merge, merge_dense, merge_video
    if how == "prune":
        prunekit.prune(model, inputs, target_macs=0.5, importance="l2")
    elif how == "tome":
        merge(model, target_macs=0.6, example_inputs=inputs)
    elif how == "dense-merge":
        merge_dense(model, windows=20, r=10)
    elif how == "tubes":
        merge_video(model, tubes=30, r=8)
    return model


PAIRS = [("fmnist-resnet", "prune", "structured, 50% MACs"), ("fmnist-vit", "prune", "structured, 50% MACs"),
         ("fmnist-vit", "tome", "ToMe, 60% MACs"), ("mosaic-segvit", "dense-merge", "20 windows + ToMe r=10"),
         ("motion-vivit", "tubes", "30 time tubes + ToMe r=8")]


def timing_args(doc: str) -> argparse.Namespace:
    """``--threads/--warmup/--repeats`` parsed, and torch's thread count set from them."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def pairs():
    """``(name, how, label, inputs, dense, compressed)`` for every pair in :data:`PAIRS`."""
    for name, how, label in PAIRS:
        wl = load(name)
        inputs = tuple(wl.example_inputs)
        dense = wl.model.eval()
        yield name, how, label, inputs, dense, _compress(name, how, copy.deepcopy(dense), inputs).eval()


def main() -> None:
    args = timing_args(__doc__)
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, how, label, inputs, dense, comp in pairs():
            r = {}
            try:
                for tag, model in (("dense", dense), ("compressed", comp)):
                    path = Path(tmp) / f"{name}-{how}-{tag}.onnx"
                    ex = export_onnx(model, inputs, path)
                    r[tag] = {"max_abs_diff": ex["max_abs_diff"], "export_s": ex["export_seconds"],
                              "ort_ms": _ort_ms(path, inputs, args.threads, args.warmup, args.repeats),
                              "torch_ms": _torch_ms(model, inputs, args.warmup, args.repeats)}
            except prunekit.PruningError as e:  # reported as a row: what does not export yet
                raw[f"{name}/{how}"] = {"failed": str(e)[:400], **r}
                rows.append([name, label, int(inputs[0].shape[0]), r.get("dense", {}).get("ort_ms", "-"),
                             f"export fails: {e.reason[:90]}", "-", "-", "-", "-"])
                print(rows[-1], flush=True)
                continue
            ort_x = r["dense"]["ort_ms"] / r["compressed"]["ort_ms"]
            torch_x = r["dense"]["torch_ms"] / r["compressed"]["torch_ms"]
            raw[f"{name}/{how}"] = {**r, "ort_speedup": ort_x, "torch_speedup": torch_x}
            worst = max(r["dense"]["max_abs_diff"], r["compressed"]["max_abs_diff"])
            rows.append([name, label, int(inputs[0].shape[0]), round(r["dense"]["ort_ms"], 2),
                         round(r["compressed"]["ort_ms"], 2), round(ort_x, 3), round(torch_x, 3),
                         round(ort_x / torch_x, 3), f"{worst:.1e}"])
            print(rows[-1], flush=True)
    met = sum(1 for row in rows if isinstance(row[7], float) and row[7] >= 0.9)
    write_result("export_ort", "onnxruntime CPU latency, dense vs compressed, next to PyTorch eager",
                 ["model", "compression", "batch", "ORT dense ms", "ORT compressed ms", "ORT speed-up",
                  "PyTorch speed-up", "ORT / PyTorch speed-up", "max |ORT - PyTorch|"], rows,
                 notes=(f"Exported with torch.onnx.export(dynamo=True) via prunekit.export_onnx, each file checked "
                        f"in onnxruntime against PyTorch. Median of {args.repeats} runs after {args.warmup} warm-up "
                        f"runs, {args.threads} thread(s) for both runtimes, the zoo's example batch. The goal (ORT "
                        f"speed-up >= 90% of PyTorch's) is met by {met} of {len(rows)} pairs."),
                 setup={"threads": args.threads, "repeats": args.repeats, "warmup": args.warmup}, raw=raw)


if __name__ == "__main__":
    main()
