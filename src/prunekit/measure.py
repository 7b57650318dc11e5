"""Measure what a compression buys and costs: parameters, MACs, latency, peak memory, task metric.

Every result in prunekit goes through :func:`profile`, whose dict is the JSON shape the CLI prints
(``params``, ``macs``, ``latency_ms``, ``batch_size``, ``threads``, ``metric``, ...).

>>> import torch
>>> lin = torch.nn.Linear(64, 32)
>>> count_macs(lin, (torch.randn(4, 64),))   # 4 rows x 64 in x 32 out
8192
"""
from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count, shape_wrapper

__all__ = ["run_model", "batch_size_of", "count_params", "count_nonzero_params", "count_macs",
           "measure_latency", "compare_latency", "peak_memory", "profile", "embedding_fidelity", "threads",
           "no_mha_fastpath", "rnn_macs", "counting_macs", "MacCount", "repeat_batch", "layer_widths",
           "paired_timings", "THROUGHPUT_BATCH"]


def run_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` on ``inputs``: a dict is passed as keywords, a tuple/list as positional args."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def batch_size_of(inputs: Any) -> int:
    """The leading dimension of the first tensor in ``inputs``."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    values = inputs.values() if isinstance(inputs, dict) else inputs
    for v in values:
        if isinstance(v, torch.Tensor):
            return int(v.shape[0])
    raise ValueError("inputs hold no tensor, so the batch size is unknown")


def repeat_batch(inputs: Any, n: int) -> Any:
    """``inputs`` with every batched tensor repeated ``n`` times along dim 0 (a throughput batch).

    >>> repeat_batch((torch.zeros(2, 3), 5), 4)[0].shape
    torch.Size([8, 3])
    >>> repeat_batch({"ids": torch.zeros(2, 7, dtype=torch.long)}, 3)["ids"].shape
    torch.Size([6, 7])
    """
    def grow(t):
        return torch.cat([t] * n, 0) if isinstance(t, torch.Tensor) and t.dim() > 0 else t
    if isinstance(inputs, dict):
        return {k: grow(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(grow(t) for t in inputs)
    return grow(inputs)


def layer_widths(dense: nn.Module, model: nn.Module) -> list[dict]:
    """Per conv/linear layer of ``model`` (in module order): its output width, the same layer's width
    in ``dense`` (matched by name) and its sparsity (share of exact zeros in the weight).

    >>> d = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    >>> p = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    >>> [(la["name"], la["dense_out"], la["out"]) for la in layer_widths(d, p)]
    [('0', 8, 5), ('1', 2, 2)]
    """
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    ref = {n: m for n, m in dense.named_modules() if isinstance(m, kinds)}
    out = []
    for name, m in model.named_modules():
        if isinstance(m, kinds) and name in ref:
            w = m.weight.detach()
            out.append({"name": name, "dense_out": int(ref[name].weight.shape[0]), "out": int(w.shape[0]),
                        "sparsity": round(float((w == 0).sum()) / max(1, w.numel()), 4)})
    return out


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Number of parameters that are not exactly zero (what unstructured sparsity removes)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


@contextmanager
def no_mha_fastpath():
    """Turn ``nn.MultiheadAttention``'s fused inference path off for a block (the setting is restored).

    Its fused kernel (``aten._native_multi_head_attention``) is invisible to the flop counter, so a
    dense model counted with it on looks cheaper than a pruned one counted op by op."""
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


class MacCount:
    """What :func:`counting_macs` measured; ``macs`` is set when its block exits normally."""

    macs: int | None = None


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's flop counter knows the CUDA attention kernels but not the CPU one that
# F.scaled_dot_product_attention dispatches to, so attention would count as 0 MACs on the CPU
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
                       torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}
_FORMULAS = {**flop_registry, **{k: shape_wrapper(v) for k, v in CPU_ATTENTION_FLOPS.items()}}
# ops run as they are instead of decomposed: no op of their decompositions has a FLOP formula (torch counts
# them as 0 either way), and the decomposed batch norm runs as a chain of slow pointwise ops
_NOT_DECOMPOSED = {torch.ops.prim.device.default, torch.ops.aten.native_batch_norm.default,
                   torch.ops.aten._native_batch_norm_legit.default,
                   torch.ops.aten._native_batch_norm_legit_no_training.default}

_DECOMPOSABLE: dict[Any, bool] = {}


def _decomposable(func) -> bool:
    """Whether ``func.decompose`` would do anything (the test it makes itself), cached per op: most ops
    have no decomposition, and trying one costs a dispatch-mode push and pop per op."""
    hit = _DECOMPOSABLE.get(func)
    if hit is None:
        key = torch._C.DispatchKey.CompositeImplicitAutograd
        hit = func not in _NOT_DECOMPOSED and (key in func.py_kernels or
                                               torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), key))
        _DECOMPOSABLE[func] = hit
    return hit


class _FlopTally(TorchDispatchMode):
    """The dispatch rule of ``torch.utils.flop_counter.FlopCounterMode``: try an op's decomposition
    first (except ``_NOT_DECOMPOSED``), else run it and add the FLOPs of its registered formula.
    Without FlopCounterMode's per-module attribution, whose hooks on every module call cost a third of
    a counted forward on small-op models (and whose module tracker fails on a parameter view made
    under no_grad: CaiT's cls_token)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _decomposable(func):
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        formula = _FORMULAS.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


@contextmanager
def counting_macs(model: nn.Module):
    """Count the multiply-accumulates of everything ``model`` runs inside the block (FLOPs / 2 by
    ``torch.utils.flop_counter``'s formulas, recurrent layers by :func:`rnn_macs`, ``nn.MultiheadAttention``
    op by op).

    Lets a forward pass that is run anyway (a trace, a check) be counted too, instead of a second one.

    >>> lin = torch.nn.Linear(64, 32)
    >>> with counting_macs(lin) as c:
    ...     _ = lin(torch.randn(4, 64))
    >>> c.macs
    8192
    """
    recurrent = [0]
    hooks = [m.register_forward_hook(_rnn_macs(recurrent)) for m in model.modules() if isinstance(m, nn.RNNBase)]
    tally = _FlopTally()
    result = MacCount()
    try:
        with no_mha_fastpath(), tally:
            yield result
    finally:
        for h in hooks:
            h.remove()
    result.macs = int(tally.flops // 2) + recurrent[0]


def count_macs(model: nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one forward pass, from ``torch.utils.flop_counter``'s formulas (FLOPs / 2),
    with ``nn.MultiheadAttention`` counted op by op (:func:`no_mha_fastpath`)."""
    with counting_macs(model) as c:
        run_model(model, inputs)
    return c.macs


def rnn_macs(module: nn.RNNBase, x: torch.Tensor) -> int:
    """Multiply-accumulates of an LSTM / GRU / RNN over input ``x`` (the flop counter has no rule for
    the fused recurrent kernels): ``gates * hidden * (input + hidden)`` per step, layer and direction.

    >>> rnn_macs(nn.LSTM(8, 16), torch.randn(5, 2, 8))   # 4 gates * 16 * (8 + 16) * 5 steps * 2 sequences
    15360
    """
    if hasattr(x, "data") and type(x).__name__ == "PackedSequence":
        steps_batch = int(x.data.shape[0])
    else:
        steps_batch = int(x.shape[0] * x.shape[1]) if x.dim() == 3 else int(x.shape[0])
    gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
    dirs = 2 if module.bidirectional else 1
    h, out = module.hidden_size, module.proj_size or module.hidden_size
    total = 0
    for layer in range(module.num_layers):
        inp = module.input_size if layer == 0 else out * dirs
        total += dirs * (gates * h * (inp + out) + (h * out if module.proj_size else 0))
    return total * steps_batch


def _rnn_macs(acc: list[int]):
    def hook(module, args, output):
        acc[0] += rnn_macs(module, args[0])
    return hook


@contextmanager
def threads(n: int | None):
    """Temporarily set ``torch``'s intra-op thread count."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def measure_latency(model: nn.Module, inputs: Any, warmup: int = 3, repeats: int = 10,
                    num_threads: int | None = None, min_seconds: float = 0.0) -> dict:
    """Wall-clock latency of one forward pass: median, 10th and 90th percentile over ``repeats``."""
    with threads(num_threads) as n, torch.inference_mode():
        for _ in range(warmup):
            run_model(model, inputs)
        times, t_start = [], time.perf_counter()
        while len(times) < repeats or time.perf_counter() - t_start < min_seconds:
            t0 = time.perf_counter()
            run_model(model, inputs)
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {"latency_ms": round(statistics.median(times), 3), "latency_p10_ms": round(q[0], 3),
            "latency_p90_ms": round(q[-1], 3), "repeats": len(times), "warmup": warmup,
            "batch_size": batch_size_of(inputs), "threads": n}


def compare_latency(models: dict[str, nn.Module], inputs: Any, rounds: int = 3, warmup: int = 2,
                    repeats: int = 10, num_threads: int | None = None) -> dict[str, float]:
    """Median latency (ms) of each model, timed in interleaved rounds so background load hits all alike.

    Each round times every model in turn (``warmup`` + ``repeats`` forwards); the result per model is
    the median of its round medians. Use it for any "x times faster" claim.

    >>> m = nn.Linear(4, 4)
    >>> sorted(compare_latency({"a": m, "b": m}, torch.zeros(2, 4), rounds=1, repeats=2))
    ['a', 'b']
    """
    per: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            per[k].append(measure_latency(m, inputs, warmup, repeats, num_threads)["latency_ms"])
    return {k: round(statistics.median(v), 3) for k, v in per.items()}


THROUGHPUT_BATCH = 32  # images (or sentences) per forward for throughput figures


def paired_timings(dense: nn.Module, model: nn.Module, inputs: Any, repeats: int = 5,
                   throughput_batch: int = THROUGHPUT_BATCH, num_threads: int | None = None) -> dict:
    """Latency at the batch of ``inputs`` and images/s at ``throughput_batch`` (``inputs`` repeated),
    ``dense`` and ``model`` timed in 3 interleaved rounds of the same run (:func:`compare_latency`),
    so that each speed-up and the two times it is the ratio of come from one measurement.
    ``throughput_batch=0`` skips the throughput pair. ``model is dense`` times one model.

    >>> net = nn.Linear(8, 8)
    >>> t = paired_timings(net, net, torch.zeros(4, 8), repeats=1, throughput_batch=8)
    >>> t["speedup"], t["throughput_speedup"], t["batch_size"], t["throughput_batch"]
    (1.0, 1.0, 4, 8)
    """
    batch = batch_size_of(inputs)
    pair = {"dense": dense} if model is dense else {"dense": dense, "model": model}
    key = "dense" if model is dense else "model"
    lat = compare_latency(pair, inputs, rounds=3, warmup=2, repeats=repeats, num_threads=num_threads)
    out = {"batch_size": batch, "latency_ms": lat[key], "dense_latency_ms": lat["dense"],
           "speedup": round(lat["dense"] / lat[key], 3)}
    if throughput_batch:
        big = repeat_batch(inputs, max(1, -(-throughput_batch // batch)))
        tput = compare_latency(pair, big, rounds=3, warmup=1, repeats=max(1, repeats // 2), num_threads=num_threads)
        n = batch_size_of(big)
        out.update(throughput_batch=n, throughput=round(1000 * n / tput[key], 1),
                   dense_throughput=round(1000 * n / tput["dense"], 1),
                   throughput_speedup=round(tput["dense"] / tput[key], 3))
    return out


class _LiveTensors(TorchDispatchMode):
    """Tracks the bytes of tensors created inside the mode that are still alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self.seen:
                    self.seen.add(key)
                    self.live += st.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, key, st.nbytes())
        return out


def peak_memory(model: nn.Module, inputs: Any) -> dict:
    """Peak bytes of one inference forward: weights and buffers plus the activations alive at once."""
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    mode = _LiveTensors()
    with torch.inference_mode(), mode:
        out = run_model(model, inputs)
    del out
    return {"weights_mb": round(weights / 2**20, 3), "activations_peak_mb": round(mode.peak / 2**20, 3),
            "peak_memory_mb": round((weights + mode.peak) / 2**20, 3)}


def profile(model: nn.Module, inputs: Any, evaluate: Callable[[nn.Module], dict] | None = None,
            num_threads: int | None = None, warmup: int = 3, repeats: int = 10, memory: bool = True) -> dict:
    """All measurements of ``model`` on ``inputs`` in one dict (the ``prunekit profile --json`` shape).

    >>> import torch
    >>> p = profile(torch.nn.Linear(8, 2), (torch.randn(3, 8),), repeats=3)
    >>> p["params"], p["macs"], p["batch_size"]
    (18, 48, 3)
    """
    was = model.training
    model.eval()
    try:
        out = {"params": count_params(model), "nonzero_params": count_nonzero_params(model),
               "macs": count_macs(model, inputs)}
        out.update(measure_latency(model, inputs, warmup, repeats, num_threads))
        if memory:
            out.update(peak_memory(model, inputs))
        out["metric"] = evaluate(model) if evaluate else {}
    finally:
        model.train(was)
    return out


def embedding_fidelity(emb: torch.Tensor, ref: torch.Tensor) -> dict:
    """Fidelity of sentence embeddings against the dense model's, row ``i`` = sentence ``i``.

    ``fidelity``: mean cosine similarity between each compressed and dense embedding.
    ``retrieval_top1``: how often each sentence's nearest other sentence is the same in both spaces.

    >>> import torch
    >>> e = torch.randn(5, 4)
    >>> embedding_fidelity(e, e)
    {'fidelity': 1.0, 'retrieval_top1': 1.0}
    """
    a = nn.functional.normalize(emb.float(), dim=-1)
    b = nn.functional.normalize(ref.float(), dim=-1)
    fid = float((a * b).sum(-1).mean())
    eye = torch.eye(a.shape[0], dtype=torch.bool)
    nn_a = (a @ a.T).masked_fill(eye, -2).argmax(-1)
    nn_b = (b @ b.T).masked_fill(eye, -2).argmax(-1)
    return {"fidelity": round(min(fid, 1.0), 6), "retrieval_top1": round(float((nn_a == nn_b).float().mean()), 6)}
