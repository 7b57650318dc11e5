"""torch.compile (inductor, CPU): dense vs compressed speed-ups, next to eager's, for the models prunekit produces.

Same pairs and the same compression as ``bench_export_ort.py``: structured pruning to 50% MACs
(fmnist-resnet, fmnist-vit), ToMe at 60% MACs (fmnist-vit), local-then-global merging
(mosaic-segvit) and time tubes (motion-vivit). For each model, ``torch._dynamo.explain`` counts the
graph breaks, then ``torch.compile(model)`` (inductor, default mode) is timed after its compile
(``--warmup`` runs, then the median of ``--repeats``) on the zoo's example batch, with
``torch.set_num_threads(--threads)``; the compiled outputs are compared with eager ones.

    python benchmarks/bench_compile.py [--threads 1] [--repeats 20]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_export_ort import ABLATIONS, _median_ms, pairs, timing_args  # noqa: E402
from common import write_result  # noqa: E402


def _measure(model, inputs: tuple, warmup: int, repeats: int) -> dict:
    torch._dynamo.reset()
    with torch.no_grad():
        eager_out = model(*inputs)
        explained = torch._dynamo.explain(model)(*inputs)
        eager_ms = _median_ms(lambda: model(*inputs), warmup, repeats)
        compiled = torch.compile(model)
        t = time.perf_counter()
        out = compiled(*inputs)
        compile_s = time.perf_counter() - t
        compiled_ms = _median_ms(lambda: compiled(*inputs), warmup, repeats)
    torch._dynamo.reset()
    return {"graph_breaks": explained.graph_break_count, "graphs": explained.graph_count,
            "eager_ms": eager_ms, "compiled_ms": compiled_ms, "compile_s": compile_s,
            "max_abs_diff": float((out - eager_out).abs().max())}


def main() -> None:
    args = timing_args(__doc__)
    rows, raw = [], {}
    for name, how, label, inputs, dense, comp in pairs():
        if how in ABLATIONS:  # an export setting (no padding): the same eager model as its base pair
            continue
        r = {tag: _measure(m, inputs, args.warmup, args.repeats) for tag, m in (("dense", dense), ("compressed", comp))}
        eager_x = r["dense"]["eager_ms"] / r["compressed"]["eager_ms"]
        compiled_x = r["dense"]["compiled_ms"] / r["compressed"]["compiled_ms"]
        raw[f"{name}/{how}"] = {**r, "eager_speedup": eager_x, "compiled_speedup": compiled_x}
        rows.append([name, label, int(inputs[0].shape[0]), r["compressed"]["graph_breaks"],
                     round(r["dense"]["compiled_ms"], 2), round(r["compressed"]["compiled_ms"], 2),
                     round(compiled_x, 3), round(eager_x, 3),
                     round(r["dense"]["eager_ms"] / r["compressed"]["compiled_ms"], 3),
                     round(r["compressed"]["compile_s"], 1),
                     f"{max(r['dense']['max_abs_diff'], r['compressed']['max_abs_diff']):.1e}"])
        print(rows[-1], flush=True)
    breaks = sum(row[3] for row in rows)
    write_result("compile", "torch.compile (inductor, CPU): dense vs compressed, next to eager",
                 ["model", "compression", "batch", "graph breaks (compressed)", "compiled dense ms",
                  "compiled compressed ms", "compiled speed-up", "eager speed-up",
                  "eager dense / compiled compressed", "compile s", "max |compiled - eager|"], rows,
                 notes=(f"torch.compile(model), inductor default mode, on the CPU; graph breaks from "
                        f"torch._dynamo.explain ({breaks} in all). Median of {args.repeats} runs after "
                        f"{args.warmup} warm-up runs (after the compile), {args.threads} thread(s), the zoo's "
                        "example batch; the same compression as the onnxruntime table."),
                 setup={"threads": args.threads, "repeats": args.repeats, "warmup": args.warmup}, raw=raw)


if __name__ == "__main__":
    main()
