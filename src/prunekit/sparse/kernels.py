"""``finalize``: bake masks into plain weights and, where it measurably pays, run Linear layers on
sparse kernels.

Kernels: ``"csr"`` and ``"bsr"`` use torch's CSR / BSR tensors (CPU and CUDA, ``torch.addmm``);
``"semi"`` uses 2:4 semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``, CUDA
GPUs with sparse tensor cores only; Mishra et al. 2021). ``kernels="auto"`` times dense and every
applicable sparse kernel on each layer's input and keeps the fastest, so a layer is only switched
when it is faster *and* gives the dense output (within 1e-3 relative). Unstructured sparsity rarely
beats a dense GEMM below ~90-95%; this is measured, not assumed.

>>> import torch
>>> from torch import nn
>>> from prunekit.sparse.oneshot import sparsify
>>> net = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2))
>>> _ = sparsify(net, 0.9)
>>> _ = finalize(net, kernels="csr")
>>> type(net[0]).__name__, net[0].weight.layout
('SparseLinear', torch.sparse_csr)
"""
from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.measure import run_model
from prunekit.sparse.masking import detach_mask, masked_modules

__all__ = ["SparseLinear", "finalize", "KERNELS", "to_kernel"]

KERNELS = ("csr", "bsr", "semi")
BSR_BLOCKS = ((32, 32), (16, 16), (8, 8))


class SparseLinear(nn.Module):
    """A Linear layer whose weight is a sparse tensor (CSR, BSR or 2:4 semi-structured).

    ``weight`` is a buffer in the sparse layout; ``bias`` stays a dense parameter.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.kernel = kernel
        self.register_buffer("weight", weight)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad) if bias is not None else None

    @classmethod
    def from_linear(cls, lin: nn.Linear, kernel: str, blocksize: tuple[int, int] | None = None) -> SparseLinear:
        return cls(to_kernel(lin.weight.detach(), kernel, blocksize), lin.bias, kernel)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "semi":
            return nn.functional.linear(x, self.weight, self.bias)
        x2 = x.reshape(-1, self.in_features)
        bias = self.bias if self.bias is not None else x2.new_zeros(self.out_features)
        # torch.addmm(bias, W, x^T); note: plain `bsr @ x` gave wrong results on CPU in torch 2.14
        y = torch.addmm(bias.unsqueeze(1), self.weight, x2.t()).t()
        return y.reshape(*x.shape[:-1], self.out_features)


def to_kernel(weight: torch.Tensor, kernel: str, blocksize: tuple[int, int] | None = None) -> torch.Tensor:
    """Convert a dense 2-D weight to the layout ``kernel`` runs on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse (CSR|BSR) tensor support is in beta.*")
        if kernel == "csr":
            return weight.to_sparse_csr()
        if kernel == "bsr":
            return weight.to_sparse_bsr(blocksize or _bsr_block(weight) or (1, 1))
    if kernel == "semi":
        if weight.device.type != "cuda":
            raise PruningError("weight", "use 2:4 semi-structured kernels", "they need a CUDA device")
        return torch.sparse.to_sparse_semi_structured(weight)
    raise PruningError("weight", "choose a sparse kernel", f"unknown kernel {kernel!r}; use one of {KERNELS}")


def _bsr_block(weight: torch.Tensor) -> tuple[int, int] | None:
    """The largest of BSR_BLOCKS that tiles ``weight`` with at most half the blocks nonzero."""
    o, i = weight.shape
    for h, w in BSR_BLOCKS:
        if o % h == 0 and i % w == 0:
            blocks = weight.reshape(o // h, h, i // w, w).ne(0).any(3).any(1)
            if blocks.float().mean() <= 0.5:
                return h, w
    return None


def _is_24(weight: torch.Tensor) -> bool:
    if weight.shape[1] % 4:
        return False
    return bool((weight.reshape(-1, 4).ne(0).sum(1) <= 2).all())


def _median_ms(fn, x: torch.Tensor, warmup: int = 2, repeats: int = 7) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _layer_inputs(model: nn.Module, layers: dict[str, nn.Linear], example_inputs: Any) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}

    def make_hook(name):
        def hook(mod, args):
            seen.setdefault(name, args[0].detach().reshape(-1, args[0].shape[-1])[:4096].clone())
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in layers.items()]
    try:
        with torch.inference_mode():
            run_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _choose(lin: nn.Linear, x: torch.Tensor, kernels: tuple[str, ...], min_speedup: float) -> dict:
    w = lin.weight.detach()
    dense = torch.nn.functional.linear(x, w, lin.bias)
    timing = {"dense_ms": round(_median_ms(lambda a: torch.nn.functional.linear(a, w, lin.bias), x), 4)}
    best, best_ms = "dense", timing["dense_ms"] / min_speedup
    for k in kernels:
        if k == "bsr" and _bsr_block(w) is None:
            continue
        if k == "semi" and not (w.is_cuda and _is_24(w)):
            continue
        try:
            layer = SparseLinear.from_linear(lin, k)
            out = layer(x)
        except (RuntimeError, PruningError, NotImplementedError):
            continue
        if not torch.allclose(out.float(), dense.float(), rtol=1e-3, atol=1e-3 * float(dense.abs().max()) + 1e-5):
            continue
        ms = _median_ms(layer, x)
        timing[f"{k}_ms"] = round(ms, 4)
        if ms < best_ms:
            best, best_ms = k, ms
    return {"kernel": best, **timing}


def finalize(model: nn.Module, kernels: str | None = None, *, example_inputs: Any = None, rows: int = 256,
             min_speedup: float = 1.05, min_sparsity: float = 0.5) -> dict[str, dict]:
    """Bake every attached mask into its weight and remove masks and hooks; optionally swap Linear layers
    for :class:`SparseLinear`.

    Args:
        kernels: ``None`` (plain dense weights), ``"csr"``, ``"bsr"``, ``"semi"`` (force that kernel on
            every sparse Linear) or ``"auto"`` (per layer, whichever of dense/csr/bsr/semi is fastest on a
            quick timing; a sparse kernel must beat dense by ``min_speedup``).
        example_inputs: model inputs used to capture each layer's real input for the timing;
            otherwise a random ``(rows, in_features)`` batch is used.
        min_sparsity: Linear layers with fewer zeros than this stay dense.

    Returns ``{layer: {"kernel": ..., "dense_ms": ..., "<kernel>_ms": ...}}`` for the Linear layers
    considered (empty without ``kernels``). The output layer is never converted.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    >>> finalize(net)
    {}
    """
    if kernels not in (None, "auto", *KERNELS):
        raise PruningError("model", "finalize", f"unknown kernels {kernels!r}; use None, 'auto' or one of {KERNELS}")
    if kernels == "semi" and any(p.device.type != "cuda" for p in model.parameters()):
        raise PruningError("model", "use 2:4 semi-structured kernels", "they need the model on a CUDA device")
    for _, mod in masked_modules(model):
        detach_mask(mod)
    if kernels is None:
        return {}
    from prunekit.sparse.targets import output_layer
    head = output_layer(model)
    cands = {n: m for n, m in model.named_modules()
             if type(m) is nn.Linear and m is not head and m.weight.numel()
             and float((m.weight == 0).float().mean()) >= min_sparsity}
    inputs = _layer_inputs(model, cands, example_inputs) if example_inputs is not None else {}
    plan: dict[str, dict] = {}
    for name, lin in cands.items():
        if kernels == "auto":
            x = inputs.get(name)
            if x is None:
                x = torch.randn(rows, lin.in_features, device=lin.weight.device, dtype=lin.weight.dtype)
            plan[name] = _choose(lin, x, KERNELS, min_speedup)
        else:
            plan[name] = {"kernel": kernels}
    new = {n: SparseLinear.from_linear(cands[n], p["kernel"]) for n, p in plan.items() if p["kernel"] != "dense"}
    for name, layer in new.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    return plan
