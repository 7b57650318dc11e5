"""Dense vs sparse-kernel latency of the Linear layers of fmnist-vit and minilm at 50-98% sparsity.

Every Linear layer except the output layer is timed on the input it really sees when the model runs
its example batch (fmnist-vit: 8 images x 197 tokens = 1576 rows; minilm: 32 sentences x padded
length). At each sparsity each layer is pruned by magnitude (layer-wise) and timed three ways in the
same run, interleaved: dense ``F.linear``, torch CSR (unstructured mask) and torch BSR (a
``block:16x16`` mask at the same sparsity, since BSR needs whole zero blocks). Each time is the median
of ``--repeats`` runs after warm-up; the table sums the per-layer medians. ``--clock cpu`` (default)
times with the calling thread's CPU time (``time.thread_time``; torch runs single-threaded ops inline),
which stays meaningful on a machine shared with other jobs; ``--clock wall`` uses wall-clock time.
``auto`` counts the layers where ``finalize(kernels="auto")``'s rule (sparse at least 5% faster
than dense) picks a sparse kernel.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sparsity_kernels.py [--models fmnist-vit minilm]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import write_result
from torch import nn

from prunekit.measure import run_model
from prunekit.sparse import masks as M
from prunekit.sparse.kernels import SparseLinear, to_kernel
from prunekit.sparse.targets import output_layer

NAME = "sparsity_kernels"
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)
COLUMNS = ["model", "sparsity", "dense_ms", "csr_ms", "bsr16_ms", "csr_speedup", "bsr_speedup",
           "auto_sparse_layers", "layers"]


def load_model(name: str) -> tuple[nn.Module, object, str]:
    from prunekit.zoo import build, load
    try:
        wl = load(name)
        return wl.model, wl.example_inputs, "trained checkpoint"
    except FileNotFoundError:
        from prunekit.data import load_fashion_mnist, normalize
        model = build(name).eval()
        return model, (normalize(load_fashion_mnist("test")[0][:8]),), "random init (checkpoint not yet trained)"


def layer_inputs(model: nn.Module, inputs) -> dict[str, tuple[nn.Linear, torch.Tensor]]:
    head = output_layer(model)
    seen: dict[str, tuple[nn.Linear, torch.Tensor]] = {}
    handles = []
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear and mod is not head:
            def hook(m, args, name=name):
                seen.setdefault(name, (m, args[0].detach().reshape(-1, args[0].shape[-1]).clone()))
            handles.append(mod.register_forward_pre_hook(hook))
    with torch.inference_mode():
        run_model(model, inputs)
    for h in handles:
        h.remove()
    return seen


CLOCK = time.thread_time


def clock_ms(fn: callable) -> float:
    """One call of ``fn`` timed with :data:`CLOCK`, in ms."""
    t0 = CLOCK()
    fn()
    return (CLOCK() - t0) * 1e3


def interleaved_medians(fns: dict[str, callable], warmup: int, repeats: int, time_ms: callable = None
                        ) -> dict[str, float]:
    """Median ms per function over ``repeats`` rounds that call each in turn; ``time_ms``: how one call is timed."""
    time_ms = time_ms or clock_ms
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(repeats):
            for k, fn in fns.items():
                times[k].append(time_ms(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def bench_model(name: str, warmup: int, repeats: int) -> tuple[list[list], dict]:
    model, inputs, source = load_model(name)
    layers = layer_inputs(model, inputs)
    rows, raw = [], {"source": source, "rows_per_layer": {}, "per_layer": {}}
    for s in SPARSITIES:
        tot = {"dense": 0.0, "csr": 0.0, "bsr": 0.0}
        auto = 0
        for lname, (lin, x) in layers.items():
            w = lin.weight.detach()
            raw["rows_per_layer"][lname] = x.shape[0]
            w_un = w * M.unstructured_masks([w.abs()], s)[0]
            w_blk = w * M.block_masks([w.abs()], s, 16, 16)[0]
            csr = SparseLinear(to_kernel(w_un, "csr"), lin.bias, "csr")
            bsr = SparseLinear(to_kernel(w_blk, "bsr", (16, 16)), lin.bias, "bsr")
            assert torch.allclose(csr(x), nn.functional.linear(x, w_un, lin.bias), atol=1e-4)
            assert torch.allclose(bsr(x), nn.functional.linear(x, w_blk, lin.bias), atol=1e-4)
            med = interleaved_medians({"dense": lambda w=w_un, b=lin.bias, x=x: nn.functional.linear(x, w, b),
                                       "csr": lambda x=x, m=csr: m(x), "bsr": lambda x=x, m=bsr: m(x)},
                                      warmup, repeats)
            for k in tot:
                tot[k] += med[k]
            auto += min(med["csr"], med["bsr"]) * 1.05 < med["dense"]
            raw["per_layer"][f"{s}:{lname}"] = {k: round(v, 4) for k, v in med.items()}
        rows.append([name, s, round(tot["dense"], 3), round(tot["csr"], 3), round(tot["bsr"], 3),
                     round(tot["dense"] / tot["csr"], 3), round(tot["dense"] / tot["bsr"], 3), auto, len(layers)])
        print(rows[-1], flush=True)
    return rows, raw


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["fmnist-vit", "minilm"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit("--clock cpu measures one thread; use --threads 1 or --clock wall")
    rows, raw = [], {}
    for name in args.models:
        r, raw[name] = bench_model(name, args.warmup, args.repeats)
        rows += r
    batch = {"fmnist-vit": "8 images (1576 token rows)", "minilm": "32 sentences (32 x padded length rows)"}
    write_result(NAME, "Unstructured sparsity: dense vs CSR / BSR latency of the Linear layers (CPU)", COLUMNS, rows,
                 notes="Sum over all Linear layers except the output layer of per-layer median latency; dense, CSR "
                       "and BSR timed interleaved in the same run. CSR on a magnitude (unstructured) mask, BSR on "
                       "a block:16x16 mask of the same sparsity. speedup = dense_ms / sparse_ms (>1 is faster). "
                       f"Clock: {args.clock} ('cpu' = CPU time of the single compute thread, used because the "
                       "machine was shared with training jobs; 'wall' = wall clock). Weights: " +
                       "; ".join(f"{k}: {v['source']}" for k, v in raw.items()),
                 setup={"threads": args.threads, "batch_size": batch, "warmup": args.warmup, "clock": args.clock,
                        "repeats": args.repeats, "statistic": "median"},
                 raw=raw)


if __name__ == "__main__":
    main()
