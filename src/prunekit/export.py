"""ONNX export of any model prunekit produces, checked in onnxruntime before it is reported done.

:func:`export_onnx` exports with ``torch.onnx.export(dynamo=True)`` (the TorchScript exporter fails
on token-merged ViTs), runs the file in onnxruntime on the example inputs (and, with
``dynamic_batch``, on a batch of another size) and compares with PyTorch. Pruned models have
smaller layers, ToMe / dense / video merging have fixed token counts per configuration and
DynamicViT keeps a fixed top-k, so every graph has static shapes apart from the batch.

The check's tolerance: float32 results of the same graph may differ by reassociation, about
``eps * sqrt(K)`` relative for K-term sums and more after a softmax; we allow
``1e-4 * (1 + max|reference|)`` (eps = 1.2e-7, reductions up to ~1e5 terms deep across layers).

>>> import torch, tempfile
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
>>> res = export_onnx(net, (torch.randn(3, 4),), tempfile.mktemp(suffix=".onnx"))   # doctest: +SKIP
>>> res["max_abs_diff"] < res["tolerance"]                                           # doctest: +SKIP
True
"""
from __future__ import annotations

import contextlib
import io
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.measure import repeat_batch

__all__ = ["export_onnx", "check_onnx", "outputs_as_tensors", "layout_hints"]


def outputs_as_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output, in order (tensor, tuple/list, dict or Hugging Face ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        out = list(out.to_tuple()) if hasattr(out, "to_tuple") else list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in outputs_as_tensors(o)]
    return []


def _split(inputs: Any) -> tuple[tuple, dict]:
    if isinstance(inputs, dict):
        return (), dict(inputs)
    return (tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)), {}


def _feeds(session, args: tuple, kw: dict) -> dict:
    names = [i.name for i in session.get_inputs()]
    values = [*args, *kw.values()]
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if len(names) != len(tensors):
        raise PruningError("onnx", "check the export", f"the graph takes {len(names)} inputs ({names}), the example "
                           f"has {len(tensors)} tensors")
    return {n: t.detach().cpu().numpy() for n, t in zip(names, tensors, strict=True)}


def check_onnx(path: str | Path, model: nn.Module, inputs: Any, threads: int | None = None) -> dict:
    """Run ``path`` in onnxruntime on ``inputs`` and compare with ``model``; ``{"max_abs_diff", "tolerance"}``."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    args, kw = _split(inputs)
    with torch.no_grad():
        ref = outputs_as_tensors(model(*args, **kw))
    got = session.run(None, _feeds(session, args, kw))
    if len(got) < len(ref[:1]):
        raise PruningError("onnx", "check the export", "the graph returns no output")
    diff, scale = 0.0, 0.0
    for r, g in zip(ref, got, strict=False):
        if tuple(r.shape) != tuple(g.shape):
            raise PruningError("onnx", "check the export", f"output shape {tuple(g.shape)} differs from "
                               f"PyTorch's {tuple(r.shape)}")
        r = r.detach().float().cpu()
        gap = (r - torch.from_numpy(g).float()).abs()
        diff = max(diff, float(torch.nan_to_num(gap, nan=float("inf")).max()))  # a NaN fails the check
        scale = max(scale, float(r.abs().max()))
    return {"max_abs_diff": diff, "tolerance": 1e-4 * (1 + scale), "outputs": [list(r.shape) for r in ref]}


ORT_CONV_BLOCK = 8  # onnxruntime's CPU convs run in a blocked layout: 8 channels (AVX2), 16 (AVX-512)


def layout_hints(model: nn.Module, block: int = ORT_CONV_BLOCK) -> list[str]:
    """Advice for onnxruntime's CPU speed: a conv whose channel counts are not multiples of ``block``
    misses the blocked (NCHWc) conv kernels. Pruned fmnist-resnet at 50% MACs runs 1.16x faster than
    dense in onnxruntime with free widths and 2.13x with ``round_to=8`` (benchmarks/bench_export_ort.py);
    :func:`export_onnx` pads such widths in the exported graph by default (``pad_to``), so the hint
    is only given where padding could not be applied.

    >>> layout_hints(nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3)))
    []
    >>> layout_hints(nn.Sequential(nn.Conv2d(3, 22, 3), nn.Conv2d(22, 16, 3)))[0][:52]
    '2 of 2 convs have channel counts that are not multip'
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    odd = [m for m in convs if m.out_channels % block or (m.in_channels % block and m.in_channels > 4)]
    if not odd:
        return []
    return [f"{len(odd)} of {len(convs)} convs have channel counts that are not multiples of {block}, so "
            f"onnxruntime's blocked CPU conv kernels are not used: prune with round_to={block} "
            f"(prunekit prune --round-to {block}; 16 on AVX-512) for the full speed-up"]


def _padded(model: nn.Module, example_inputs: Any, pad_to: int | None) -> tuple[nn.Module, dict | None]:
    """A copy of ``model`` with its pruned conv widths zero-padded to ``pad_to`` (see
    :func:`prunekit.structured.pad.pad_channels`), or ``model`` itself when nothing needs padding or
    padding would change the outputs (the reason is returned then)."""
    if not pad_to or not layout_hints(model, pad_to):
        return model, None
    import copy

    from prunekit.structured.pad import pad_channels
    try:
        padded = copy.deepcopy(model)
        info = pad_channels(padded, example_inputs, pad_to)
    except PruningError as e:
        return model, {"padded_groups": 0, "refused": e.reason}
    except Exception as e:  # noqa: BLE001 - padding is an optimisation: export the widths as they are
        return model, {"padded_groups": 0, "refused": f"{type(e).__name__}: {e}"[:300]}
    return (padded, info) if info["padded_groups"] else (model, info)


def export_onnx(model: nn.Module, example_inputs: Any, path: str | Path, *, dynamic_batch: bool = False,
                opset: int | None = None, check: bool = True, pad_to: int | None = ORT_CONV_BLOCK) -> dict:
    """Export ``model`` to ONNX at ``path`` and check it in onnxruntime; returns what was measured.

    ``example_inputs``: a tuple of positional tensors or a dict of keyword tensors (Hugging Face).
    ``dynamic_batch``: the batch dimension of every input stays symbolic. ``pad_to``: conv channel
    groups whose pruned width is not a multiple of it are zero-padded in the exported graph (not in
    ``model``), so that onnxruntime's blocked conv kernels run; the outputs stay those of ``model``
    (the onnxruntime check compares against ``model`` itself) and ``result["padded"]`` says what
    grew. ``None`` exports the widths as they are. Raises ``PruningError`` naming the failing
    operation when the exporter cannot express the model, or when onnxruntime's outputs differ from
    PyTorch's by more than the tolerance (the file is removed then).
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise PruningError(str(path), "export to ONNX", "give a path ending in .onnx")
    if pad_to is not None and pad_to < 2:
        raise PruningError(str(path), "export to ONNX", f"pad_to must be at least 2 (or None), got {pad_to}")
    path.parent.mkdir(parents=True, exist_ok=True)
    reference = model
    model, padded = _padded(model, example_inputs, pad_to)
    was = model.training
    model.eval()
    args, kw = _split(example_inputs)
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        if args and kw:
            raise PruningError(type(model).__name__, "export to ONNX", "dynamic_batch takes positional or keyword "
                               "inputs, not both")
        dynamic = {k: {0: batch} for k in kw} if kw else tuple({0: batch} for _ in args)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(path), kwargs=kw or None, dynamo=True, opset_version=opset,
                              dynamic_shapes=dynamic, external_data=False)
    except Exception as e:  # noqa: BLE001 - any exporter failure is reported as one PruningError
        path.unlink(missing_ok=True)
        line = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise PruningError(type(model).__name__, "export to ONNX", f"{type(e).__name__}: {line[:300]}") from e
    finally:
        model.train(was)
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size, "export_seconds": round(seconds, 2),
                              "dynamic_batch": dynamic_batch, "opset": opset}
    if padded is not None:
        result["padded"] = padded
    if check:
        ref_was = reference.training
        reference.eval()
        try:
            runs = [check_onnx(path, reference, example_inputs)]
            if dynamic_batch:
                runs.append(check_onnx(path, reference, repeat_batch(example_inputs, 2)))
        except PruningError:
            path.unlink(missing_ok=True)
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime cannot run what the exporter wrote
            path.unlink(missing_ok=True)
            line = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise PruningError(type(model).__name__, "run the ONNX export in onnxruntime", line[:300]) from e
        finally:
            reference.train(ref_was)
        diff = max(r["max_abs_diff"] for r in runs)
        tol = min(r["tolerance"] for r in runs)
        if not diff <= tol:
            path.unlink(missing_ok=True)
            raise PruningError(type(model).__name__, "export to ONNX", f"onnxruntime differs from PyTorch by "
                               f"{diff:.3g} (tolerance {tol:.3g}); the file was removed")
        first = next(t for t in [*args, *kw.values()] if isinstance(t, torch.Tensor))
        batches = [int(first.shape[0])] + ([2 * int(first.shape[0])] if dynamic_batch else [])
        result.update(max_abs_diff=diff, tolerance=tol, outputs=runs[0]["outputs"], checked_batches=batches)
    hints = layout_hints(model, pad_to or ORT_CONV_BLOCK)
    if hints:
        result["hints"] = hints
    return result
