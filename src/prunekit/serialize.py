"""``save`` / ``load``: a whole model, architecture included, in one safetensors file, sparse weights compressed.

The file holds:

- the module *tree* as JSON data (:mod:`prunekit.tree`): each module's class by import path, its
  plain attributes and children, so changed architectures (smaller Linear/Conv layers, edited
  attributes such as ``num_heads``, swapped modules) come back as they were saved;
- every parameter and buffer (non-persistent buffers such as sparsity masks included), shared
  tensors stored once. A tensor that is at least 25% zeros is stored as a bitmask (``numpy.packbits``,
  one bit per entry) plus its nonzero values, so at 90% sparsity a float32 matrix takes ~13% of its
  dense size; sparse-layout tensors (CSR/BSR) are stored the same way and rebuilt in their layout;
- ``meta``: a JSON-able dict returned on load as ``model.prunekit_meta``.

Security: ``load`` never unpickles. It instantiates only classes of the allowed libraries (torch,
torchvision, timm, transformers, prunekit) or classes the caller passes, without calling their
constructors, so opening a file cannot run code from it.

>>> import tempfile, torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
>>> path = tempfile.mktemp(suffix=".safetensors")
>>> save(net, path, meta={"zoo": "demo"})
>>> back = load(path)
>>> torch.equal(back[0].weight, net[0].weight), back.prunekit_meta
(True, {'zoo': 'demo'})
"""
from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from prunekit.errors import PruningError
from prunekit.tree import decode, encode, trusted

__all__ = ["save", "load", "FORMAT", "MIN_ZERO_FRACTION"]

FORMAT = "prunekit/2"
_PICKLED = "prunekit/1"  # the old format: an unpickled skeleton (loads only with trust_pickle=True)
MIN_ZERO_FRACTION = 0.25  # store a tensor compressed when at least this fraction is zero
_SKELETON = "__skeleton__"
_SPARSE = {torch.sparse_csr: "csr", torch.sparse_bsr: "bsr", torch.sparse_coo: "coo"}


def _slots(model: nn.Module):
    """Every ``(module_name, module, kind, attr, tensor)`` holding a parameter or buffer, duplicates included."""
    for mname, mod in model.named_modules(remove_duplicate=False):
        for kind in ("_parameters", "_buffers"):
            for attr, t in getattr(mod, kind).items():
                if t is not None:
                    yield mname, mod, kind, attr, t


def _encode(name: str, t: torch.Tensor, out: dict[str, torch.Tensor], ptrs: set[int]) -> dict:
    """Put ``t``'s storage entries into ``out``; return its description for the header."""
    info: dict[str, Any] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    layout = _SPARSE.get(t.layout)
    if layout:
        info["layout"] = layout
        if layout == "bsr":
            info["blocksize"] = list(t.values().shape[-2:])
        t = t.to_dense()
    elif type(t) not in (torch.Tensor, nn.Parameter):  # e.g. semi-structured: keep it dense
        info["layout"] = "dense-from-" + type(t).__name__
        t = t.to_dense()
    t = t.detach().cpu().contiguous()
    nz = t.ne(0)
    n_nonzero = int(nz.sum())
    if t.numel() >= 64 and t.numel() - n_nonzero >= MIN_ZERO_FRACTION * t.numel():
        info["encoding"] = "bitmask"
        out[f"{name}::bits"] = torch.from_numpy(np.packbits(nz.reshape(-1).numpy()))
        out[f"{name}::values"] = t.reshape(-1)[nz.reshape(-1)].clone()
    else:
        info["encoding"] = "dense"
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in ptrs else t  # safetensors refuses shared storage
        ptrs.add(ptr)
    return info


def _decode(name: str, info: dict, data: dict[str, torch.Tensor]) -> torch.Tensor:
    dtype = getattr(torch, info["dtype"])
    shape = tuple(info["shape"])
    if info["encoding"] == "bitmask":
        numel = int(np.prod(shape)) if shape else 1
        bits = np.unpackbits(data[f"{name}::bits"].numpy(), count=numel).astype(bool)
        mask = torch.from_numpy(bits)
        t = torch.zeros(numel, dtype=dtype)
        t[mask] = data[f"{name}::values"].to(dtype)
        t = t.view(shape)
    else:
        t = data[name]
    layout = info.get("layout")
    if layout == "csr":
        t = t.to_sparse_csr()
    elif layout == "bsr":
        t = t.to_sparse_bsr(tuple(info["blocksize"]))
    elif layout == "coo":
        t = t.to_sparse()
    return t


def save(model: nn.Module, path: str | Path, meta: dict | None = None) -> None:
    """Write ``model`` (architecture as data + weights, sparse tensors compressed) and ``meta`` to ``path``.

    ``meta=None`` keeps the ``prunekit_meta`` of a model that was itself loaded with :func:`load`.
    The architecture is stored as data (:mod:`prunekit.tree`), never pickled; what cannot be stored
    that way (a lambda hook, an object of a class outside the allowed libraries) raises
    ``PruningError`` naming the module. A module is left exactly as it was, also when saving fails.

    >>> import tempfile, torch
    >>> save(torch.nn.Linear(2, 2), tempfile.mktemp(suffix=".safetensors"), meta={"note": "x"})
    """
    if meta is None:
        meta = getattr(model, "prunekit_meta", None)
    try:
        meta_json = json.dumps(meta or {})
    except TypeError as e:
        raise PruningError(str(path), "save a model", f"meta is not JSON-serialisable: {e}") from None
    module_tree, extra = encode(model)
    canonical: dict[int, str] = {}   # id(tensor) -> name stored under
    layout: list[list] = []          # [module_name, kind, attr, canonical_name]
    ptrs: set[int] = set()
    tensors: dict[str, dict] = {}
    data: dict[str, torch.Tensor] = {}
    slots = [*_slots(model), *(("", None, "extra", k, t) for k, t in extra.items())]
    for mname, _, kind, attr, t in slots:
        full = f"{mname}.{attr}" if mname else attr
        if id(t) not in canonical:
            canonical[id(t)] = full
            tensors[full] = _encode(full, t, data, ptrs)
            if kind == "_parameters":
                tensors[full]["requires_grad"] = bool(t.requires_grad)
        layout.append([mname, kind, attr, canonical[id(t)]])
    header = {"format": FORMAT, "tensors": tensors, "layout": layout, "tree": module_tree}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(data, str(path), metadata={"prunekit": json.dumps(header), "meta": meta_json})


def load(path: str | Path, map_location: str | torch.device = "cpu", *, classes: Iterable[type] = (),
         trust_pickle: bool = False) -> nn.Module:
    """Read a model written by :func:`save`; its ``meta`` dict is attached as ``model.prunekit_meta``.

    No code from the file runs: the architecture is rebuilt from data, naming only classes of the
    allowed libraries (:data:`prunekit.tree.ALLOWED`) or of the modules of the ``classes`` you pass
    (your own model classes: one class of a module trusts the module). Files of the old pickled
    format (``prunekit/1``) are refused unless
    ``trust_pickle=True``, which unpickles them (with a warning): only for files you wrote yourself.
    Raises ``PruningError`` naming ``path`` if the file is missing or not a prunekit model file.
    """
    path = Path(path)
    op = "load a prunekit model"
    if not path.is_file():
        raise PruningError(str(path), op, "no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            data = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise PruningError(str(path), op, f"not a safetensors file ({e})") from None
    if "prunekit" not in metadata:
        raise PruningError(str(path), op, "a safetensors file without a prunekit header (plain state dict? "
                                          "use safetensors.torch.load_file)")
    try:
        header = json.loads(metadata["prunekit"])
        fmt = header.get("format")
        if fmt == _PICKLED:
            if not trust_pickle:
                raise PruningError(str(path), op, "the file is in the old pickled format (prunekit/1), whose loading "
                                   "can run code from the file; re-save it with this version, or pass "
                                   "trust_pickle=True if you wrote it yourself")
            return _load_pickled(path, header, data, metadata, map_location)
        if fmt != FORMAT:
            raise ValueError(f"unsupported format {fmt!r}, expected {FORMAT!r}")
        extra_names = {name for _, kind, _, name in header["layout"] if kind == "extra"}
        built = {name: _decode(name, header["tensors"][name], data).to(map_location) for name in extra_names}
        model = decode(header["tree"], {a: built[n] for _, kind, a, n in header["layout"] if kind == "extra"},
                       trusted(classes))
        for mname, kind, attr, name in header["layout"]:
            if kind == "extra":
                continue
            if kind not in ("_parameters", "_buffers"):
                raise ValueError(f"unknown tensor kind {kind!r}")
            mod = model.get_submodule(mname) if mname else model
            if name not in built:
                info = header["tensors"][name]
                t = _decode(name, info, data).to(map_location)
                built[name] = nn.Parameter(t, requires_grad=info.get("requires_grad", True)) \
                    if kind == "_parameters" else t
            getattr(mod, kind)[attr] = built[name]
        meta = json.loads(metadata.get("meta", "{}"))
    except PruningError:
        raise
    except Exception as e:
        raise PruningError(str(path), op, f"corrupt or incompatible file: {type(e).__name__}: {e}") from e
    model.prunekit_meta = meta
    return model


def _load_pickled(path: Path, header: dict, data: dict, metadata: dict, map_location) -> nn.Module:
    """The old format (``prunekit/1``): an unpickled skeleton. Runs code from the file."""
    warnings.warn(f"{path}: unpickling a prunekit/1 file (trust_pickle=True); re-save it to get a file that "
                  "loads without running code", stacklevel=3)
    model = torch.load(io.BytesIO(data.pop(_SKELETON).numpy().tobytes()), weights_only=False)
    built: dict[str, torch.Tensor] = {}
    for mname, kind, attr, name in header["layout"]:
        mod = model.get_submodule(mname) if mname else model
        old = getattr(mod, kind)[attr]
        if name not in built:
            t = _decode(name, header["tensors"][name], data).to(map_location)
            built[name] = nn.Parameter(t, requires_grad=old.requires_grad) if kind == "_parameters" else t
        getattr(mod, kind)[attr] = built[name]
    model.prunekit_meta = json.loads(metadata.get("meta", "{}"))
    return model
