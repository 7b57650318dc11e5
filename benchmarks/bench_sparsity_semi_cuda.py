"""2:4 semi-structured sparsity on a CUDA GPU: dense vs ``kernels="semi"`` latency, and what ``auto`` picks.

Every Linear layer except the output layer of each model (fp16, on the GPU) gets a magnitude 2:4 mask
and is timed two ways in the same run, interleaved: dense ``F.linear`` on the masked weight and
``SparseLinear(kernel="semi")`` (torch's ``to_sparse_semi_structured``). Each layer runs on the input
it really sees with the model's example batch, and on that input tiled to ``--rows`` rows (a serving
batch). Models: zoo models (fmnist-vit needs only the Fashion-MNIST test files) and ``mlp``, a 2:4
1024-4096-4096-10 MLP on 4096 random rows. Layer shapes alone: minilm's (32 sentences x 64 tokens, since
its weights package may be absent on a GPU machine) and LLM-sized ones, where 2:4 should pay. Times are
CUDA-event medians of ``--repeats`` after warm-up. ``auto_semi_layers``: layers where
``finalize(kernels="auto")`` picked ``semi`` on the 2:4 model, whose output must match the dense masked
model (``max_abs_diff``). Layers whose shape the kernel refuses are counted in ``unsupported``.

    python benchmarks/bench_sparsity_semi_cuda.py [--models fmnist-vit mlp] [--rows 8192]
"""
from __future__ import annotations

import argparse
import copy

import torch
from bench_sparsity_kernels import interleaved_medians, layer_inputs, load_model
from common import write_result
from torch import nn

from prunekit.measure import run_model
from prunekit.sparse import finalize
from prunekit.sparse import masks as M
from prunekit.sparse.kernels import SparseLinear, to_kernel

NAME = "sparsity_semi_cuda"
COLUMNS = ["layers_of", "rows", "dense_ms", "semi_ms", "speedup", "layers", "unsupported", "auto_semi_layers",
           "max_abs_diff"]
SYNTHETIC = {"minilm attn 384x384": (384, 384, 2048), "minilm ffn-in 1536x384": (1536, 384, 2048),
             "minilm ffn-out 384x1536": (384, 1536, 2048), "llm 4096x4096": (4096, 4096, None),
             "llm 11008x4096": (11008, 4096, None)}  # (out, in, rows; None: --rows)


def cuda_ms(fn: callable) -> float:
    """One call of ``fn`` timed with CUDA events, in ms."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def to_24(lin: nn.Linear) -> None:
    """Magnitude 2:4 along the input dimension, in place."""
    with torch.no_grad():
        lin.weight.mul_(M.nm_mask(lin.weight.abs(), 2, 4))


@torch.inference_mode()
def time_layers(layers: dict[str, tuple[nn.Linear, torch.Tensor]], rows: int | None, warmup: int,
                repeats: int) -> dict:
    tot = {"dense": 0.0, "semi": 0.0, "layers": 0, "unsupported": 0}
    for lin, x in layers.values():
        if rows:
            x = x.repeat(-(-rows // x.shape[0]), 1)[:rows]
        try:
            semi = SparseLinear(to_kernel(lin.weight.detach(), "semi"), lin.bias, "semi")
            out = semi(x)
        except (RuntimeError, ValueError) as err:  # shapes the CUTLASS / cuSPARSELt kernels refuse
            tot["unsupported"] += 1
            print(f"  unsupported {tuple(lin.weight.shape)}: {str(err).splitlines()[0][:120]}")
            continue
        ref = nn.functional.linear(x, lin.weight, lin.bias)
        assert torch.allclose(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
        med = interleaved_medians({"dense": lambda x=x, w=lin.weight, b=lin.bias: nn.functional.linear(x, w, b),
                                   "semi": lambda x=x, m=semi: m(x)}, warmup, repeats, cuda_ms)
        tot["dense"] += med["dense"]
        tot["semi"] += med["semi"]
        tot["layers"] += 1
    return tot


def _gpu(v):
    if not torch.is_tensor(v):
        return v
    return v.cuda().half() if v.is_floating_point() else v.cuda()


def cuda_inputs(inputs):
    return {k: _gpu(v) for k, v in inputs.items()} if isinstance(inputs, dict) else tuple(_gpu(v) for v in inputs)


def mlp() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 4096), nn.GELU(), nn.Linear(4096, 10))
    return model, (torch.randn(4096, 1024),)


def output_tensor(out) -> torch.Tensor:
    if torch.is_tensor(out):
        return out
    return out[0] if isinstance(out, (tuple, list)) else next(v for v in out.values() if torch.is_tensor(v))


def bench_model(name: str, rows: int, warmup: int, repeats: int) -> list[list]:
    model, inputs = mlp() if name == "mlp" else load_model(name)[:2]
    model, inputs = model.half().cuda().eval().requires_grad_(False), cuda_inputs(inputs)
    layers = layer_inputs(model, inputs)
    for lin, _x in layers.values():
        to_24(lin)
    with torch.inference_mode():
        ref = output_tensor(run_model(model, inputs)).float()
    auto_model = copy.deepcopy(model)
    plan = finalize(auto_model, kernels="auto", example_inputs=inputs, min_sparsity=0.5)
    with torch.inference_mode():
        diff = float((output_tensor(run_model(auto_model, inputs)).float() - ref).abs().max())
    picked = sum(p["kernel"] == "semi" for p in plan.values())
    out = []
    for r in (None, rows):
        t = time_layers(layers, r, warmup, repeats)
        n_rows = r or next(iter(layers.values()))[1].shape[0]
        speed = round(t["dense"] / t["semi"], 3) if t["semi"] else "n/a"
        out.append([name, n_rows, round(t["dense"], 4), round(t["semi"], 4), speed, t["layers"], t["unsupported"],
                    picked, round(diff, 5)])
        print(out[-1], flush=True)
    return out


def bench_synthetic(rows: int, warmup: int, repeats: int) -> list[list]:
    out = []
    for label, (o, i, n) in SYNTHETIC.items():
        torch.manual_seed(0)
        lin = nn.Linear(i, o).half().cuda().requires_grad_(False)
        to_24(lin)
        x = torch.randn(n or rows, i, device="cuda", dtype=torch.half)
        t = time_layers({label: (lin, x)}, None, warmup, repeats)
        speed = round(t["dense"] / t["semi"], 3) if t["semi"] else "n/a"
        out.append([label, n or rows, round(t["dense"], 4), round(t["semi"], 4), speed, t["layers"],
                    t["unsupported"], "", ""])
        print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["fmnist-vit", "mlp"])
    ap.add_argument("--rows", type=int, default=8192, help="serving batch: each layer's input tiled to this many rows")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    if not torch.cuda.is_available():  # not a failure: `make bench` runs every script on CPU machines too
        print("bench_sparsity_semi_cuda: skipped, it needs a CUDA GPU (2:4 semi-structured kernels); none is visible")
        return
    rows = [r for name in args.models for r in bench_model(name, args.rows, args.warmup, args.repeats)]
    rows += bench_synthetic(args.rows, args.warmup, args.repeats)
    write_result(NAME, f"2:4 semi-structured sparsity on {torch.cuda.get_device_name()}: dense vs semi latency (fp16)",
                 COLUMNS, rows,
                 notes="Sum over the Linear layers (except the output layer) of per-layer CUDA-event medians; dense "
                       "F.linear on the 2:4-masked weight vs torch to_sparse_semi_structured, interleaved in the same "
                       "run. rows: the model's example batch as token rows, then tiled to --rows. speedup = dense_ms "
                       "/ semi_ms (>1: semi is faster). auto_semi_layers / max_abs_diff: finalize(kernels='auto') on "
                       "the 2:4 model, layers it gave semi and its output's max deviation from the dense masked model.",
                 setup={"device": torch.cuda.get_device_name(), "dtype": "float16", "warmup": args.warmup,
                        "repeats": args.repeats, "statistic": "median", "batch_size": {
                            "fmnist-vit": "8 images (1576 token rows)", "mlp": "4096 rows",
                            "minilm shapes": "2048 rows (32 x 64 tokens)", "tiled": f"{args.rows} rows"}})


if __name__ == "__main__":
    main()
