"""Drop whole blocks: transformer layers or identity-shortcut residual blocks, ranked by influence.

Block influence comes from ShortGPT (Men et al., 2024, "ShortGPT: Layers in Large Language Models
are More Redundant Than You Expect", arXiv:2403.03853): a block that barely turns its input hidden
state is redundant, so ``BI = 1 - E[cos(x_in, x_out)]``, averaged over tokens (or pixels, for
channels-first feature maps) of calibration data, and the blocks with the lowest BI go first.

The block container is found by one adapter per model family (Hugging Face transformers,
``nn.TransformerEncoder``/``Decoder``, timm/torchvision ViTs and the zoo's SegViT, ResNet-like stage
models); removal swaps the container for a shorter one of the same type and fixes the attributes
that count blocks (``config.num_hidden_layers``, ``layer_idx``, ``num_layers``, timm
``feature_info``), so the result is an ordinary, smaller ``nn.Module``.

>>> import torch
>>> enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 4)
>>> res = drop_layers(enc, n=1, calib=[torch.randn(2, 5, 16)])
>>> len(enc.layers), enc.num_layers, res.params_after < res.params_before
(3, 3, True)
"""
from __future__ import annotations

import copy
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.calib import calib_batches, split_targets
from prunekit.compat import renamed
from prunekit.errors import PruningError
from prunekit.measure import count_params, run_model
from prunekit.structured.hf_save import guard_save_pretrained

__all__ = ["drop_layers", "DropResult", "find_blocks", "block_influence", "BlockSite"]

OPERATION = "drop layers"


@dataclass
class DropResult:
    """What :func:`drop_layers` removed, with every candidate block's score (lower = removed first).

    ``removed`` are indices into ``blocks`` (every block path before removal, in model order); a
    ``nan`` score marks a block that may not go (its output shape differs from its input's).
    """

    family: str
    containers: list[str]
    blocks: list[str]
    scores: list[float]
    removed: list[int] = field(default_factory=list)
    removed_paths: list[str] = field(default_factory=list)
    importance: str = "block_influence"
    params_before: int = 0
    params_after: int = 0

    def as_dict(self) -> dict:
        """A JSON-able dict of every field (``nan`` scores mark blocks that may not go)."""
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"drop_layers ({self.family}, {self.importance}): removed {len(self.removed)} of "
                 f"{len(self.blocks)} blocks, params {self.params_before:,} -> {self.params_after:,}"]
        for i, (path, s) in enumerate(zip(self.blocks, self.scores, strict=True)):
            lines.append(f"  {'x' if i in self.removed else ' '} {path:<32} {s:.6f}")
        return "\n".join(lines)


@dataclass
class BlockSite:
    """The block containers of one model and how to fix it up after blocks are removed.

    ``containers`` are dotted paths of ``nn.Sequential``/``nn.ModuleList`` modules holding blocks;
    ``needs_shape_check`` means only blocks whose output shape equals their input shape may go
    (residual CNN stages, where downsampling blocks must stay); ``fixup(model, kept, undo)`` gets,
    per container, the original indices of the kept blocks, and appends an undo callable to ``undo``
    before each change it makes (so a failure half-way can be rolled back).
    """

    family: str
    containers: list[str]
    needs_shape_check: bool = False
    fixup: Callable[[nn.Module, dict[str, list[int]], list[Callable[[], None]]], None] | None = None


# ----------------------------------------------------------------------------------------------
# Family adapters: each returns a BlockSite or None.


def _is_container(m: Any) -> bool:
    return isinstance(m, (nn.Sequential, nn.ModuleList)) and len(m) > 0


def _get(model: nn.Module, path: str) -> Any:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _set_layer_idx(blocks: Iterable[nn.Module], undo: list[Callable[[], None]]) -> None:
    """Renumber every integer ``layer_idx`` attribute inside the remaining blocks (KV-cache slots)."""
    for new_idx, block in enumerate(blocks):
        for mod in block.modules():
            old = getattr(mod, "layer_idx", None)
            if isinstance(old, int) and not isinstance(old, bool) and old != new_idx:
                undo.append(lambda mod=mod, old=old: setattr(mod, "layer_idx", old))
                mod.layer_idx = new_idx


def _hf_transformers(model: nn.Module) -> BlockSite | None:
    """Hugging Face models: the decoder/encoder layer ModuleList whose length is num_hidden_layers."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    depth = getattr(cfg, "num_hidden_layers", None)
    if not isinstance(depth, int):
        return None
    preferred = ("model.layers", "layers", "transformer.h", "h", "encoder.layer", "model.decoder.layers",
                 "decoder.layers", "encoder.layers")
    found = [p for p in preferred
             if isinstance(_get(model, p), nn.ModuleList) and len(_get(model, p)) == depth]
    if not found:  # e.g. BertForSequenceClassification: bert.encoder.layer
        found = [name for name, m in model.named_modules()
                 if isinstance(m, nn.ModuleList) and len(m) == depth
                 and name.rsplit(".", 1)[-1] in ("layer", "layers", "h", "blocks")
                 and len({type(c) for c in m}) == 1]
    if not found:
        return None
    path = found[0]

    def fixup(model: nn.Module, kept: dict[str, list[int]], undo: list[Callable[[], None]]) -> None:
        n_new = len(kept[path])
        old_depth = cfg.num_hidden_layers
        undo.append(lambda: setattr(cfg, "num_hidden_layers", old_depth))
        cfg.num_hidden_layers = n_new  # GPT-2's n_layer follows through config.attribute_map
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, list) and len(types) == old_depth:
            undo.append(lambda: setattr(cfg, "layer_types", types))
            cfg.layer_types = [types[i] for i in kept[path]]
        _set_layer_idx(model.get_submodule(path), undo)

    return BlockSite("hf-transformers", [path], fixup=fixup)


def _torch_transformer(model: nn.Module) -> BlockSite | None:
    """``nn.TransformerEncoder`` / ``nn.TransformerDecoder`` (``layers`` + ``num_layers``)."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.TransformerEncoder, nn.TransformerDecoder)) and _is_container(m.layers):
            path = f"{name}.layers" if name else "layers"

            def fixup(model: nn.Module, kept: dict[str, list[int]], undo: list[Callable[[], None]],
                      owner: nn.Module = m, path: str = path) -> None:
                old = owner.num_layers
                undo.append(lambda: setattr(owner, "num_layers", old))
                owner.num_layers = len(kept[path])

            return BlockSite("torch-transformer", [path], fixup=fixup)
    return None


def _vit_blocks(model: nn.Module) -> BlockSite | None:
    """timm ViT-like models (``blocks``), the zoo's SegViT (``encoder.blocks``), torchvision ViT
    (``encoder.layers``)."""
    for path in ("blocks", "encoder.blocks", "vit.blocks", "backbone.blocks", "encoder.layers"):
        c = _get(model, path)
        kinds = {type(b) for b in c} if _is_container(c) else set()
        if len(kinds) == 1 and not next(iter(kinds)).__module__.startswith("torch.nn"):
            break  # (EfficientNet's `blocks` holds nn.Sequential stages: not this family)
    else:
        return None
    owner = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model

    def fixup(model: nn.Module, kept: dict[str, list[int]], undo: list[Callable[[], None]]) -> None:
        info = getattr(owner, "feature_info", None)
        if not isinstance(info, list):
            return
        leaf = path.rsplit(".", 1)[-1]
        remap = {f"{leaf}.{old}": f"{leaf}.{new}" for new, old in enumerate(kept[path])}
        new_info = []
        for entry in info:
            mod = entry.get("module") if isinstance(entry, dict) else None
            if isinstance(mod, str) and mod.startswith(f"{leaf}."):
                if mod in remap:
                    new_info.append({**entry, "module": remap[mod]})
            else:
                new_info.append(entry)
        undo.append(lambda: setattr(owner, "feature_info", info))
        owner.feature_info = new_info

    return BlockSite("vit", [path], fixup=fixup)


_STAGE_NAME = re.compile(r"(^|\.)(layer\d+|stages\.\d+|stage\d+|s\d+|layers|blocks(\.\d+)?|features\.\d+)$")


def _residual_stages(model: nn.Module) -> BlockSite | None:
    """ResNet-like CNNs (torchvision/timm ``layer1..4``, timm ``stages.N.blocks``, the zoo's
    ``layers``): Sequentials of one custom block class; only identity-shortcut blocks may go."""
    found = []
    for name, m in model.named_modules():
        if not (isinstance(m, nn.Sequential) and _STAGE_NAME.search(name)):
            continue
        kinds = {type(b) for b in m}
        if len(kinds) == 1 and not next(iter(kinds)).__module__.startswith("torch.nn"):
            found.append(name)
    # innermost containers only: Swin's `layers` holds stages, each with its own `blocks`
    paths = [p for p in found if not any(q.startswith(p + ".") for q in found)]
    return BlockSite("residual-cnn", paths, needs_shape_check=True) if paths else None


ADAPTERS: list[Callable[[nn.Module], BlockSite | None]] = [
    _hf_transformers, _torch_transformer, _vit_blocks, _residual_stages]


def find_blocks(model: nn.Module) -> BlockSite | None:
    """The block containers of ``model`` (first family adapter that recognises it), or ``None``.

    >>> import timm
    >>> find_blocks(timm.create_model("vit_tiny_patch16_224")).containers
    ['blocks']
    """
    for adapter in ADAPTERS:
        site = adapter(model)
        if site is not None:
            return site
    return None


# ----------------------------------------------------------------------------------------------
# Scoring.


def _hidden(x: Any) -> torch.Tensor | None:
    """The hidden-state tensor in a block's input args/kwargs or output (tensor, tuple, ModelOutput)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, dict):
        for key in ("hidden_states", "x", "src", "tgt", "last_hidden_state", "input"):
            if isinstance(x.get(key), torch.Tensor):
                return x[key]
        x = list(x.values())
    if isinstance(x, (tuple, list)) and x:
        return _hidden(x[0])
    return None


def _token_mask(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, dict) and isinstance(batch.get("attention_mask"), torch.Tensor):
        mask = batch["attention_mask"]
        return mask if mask.dim() == 2 else None
    return None


def _run_with_hooks(model: nn.Module, blocks: list[tuple[str, nn.Module]], batches: list[Any],
                    influence: bool) -> tuple[list[float], list[bool]]:
    """Run ``batches``; per block return 1 - mean cos(in, out) and whether shapes always matched."""
    sums = [0.0] * len(blocks)
    counts = [0] * len(blocks)
    same_shape = [True] * len(blocks)
    seen = [False] * len(blocks)
    state: dict[str, Any] = {}
    inputs: dict[int, torch.Tensor | None] = {}
    handles = []

    def pre(i: int):
        def hook(mod, args, kwargs):
            inputs[i] = _hidden(args) if args else _hidden(kwargs)
        return hook

    def post(i: int):
        def hook(mod, args, kwargs, out):
            x, y = inputs.pop(i, None), _hidden(out)
            if x is None or y is None:
                same_shape[i] = False
                return
            seen[i] = True
            if x.shape != y.shape:
                same_shape[i] = False
                return
            if not influence:
                return
            dim = 1 if x.dim() == 4 else -1
            cos = nn.functional.cosine_similarity(x.detach().float(), y.detach().float(), dim=dim, eps=1e-8)
            mask = state.get("mask")
            if mask is not None and cos.dim() == 2 and cos.shape == mask.shape:
                w = mask.to(cos.dtype)
                sums[i] += float((cos * w).sum())
                counts[i] += int(w.sum())
            else:
                sums[i] += float(cos.sum())
                counts[i] += cos.numel()
        return hook

    was_training = model.training
    try:
        for i, (_, block) in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(pre(i), with_kwargs=True))
            handles.append(block.register_forward_hook(post(i), with_kwargs=True))
        model.eval()
        with torch.no_grad():
            for batch in batches:
                batch = split_targets(batch)[0]
                state["mask"] = _token_mask(batch)
                run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    scores = [1.0 - s / c if c else math.nan for s, c in zip(sums, counts, strict=True)]
    return scores, [s and v for s, v in zip(same_shape, seen, strict=True)]


def _calibrate(model: nn.Module, blocks: list[tuple[str, nn.Module]], batches: list[Any], influence: bool,
               where: str) -> tuple[list[float], list[bool]]:
    try:
        return _run_with_hooks(model, blocks, batches, influence)
    except Exception as exc:
        raise PruningError(where, OPERATION, f"the model failed on a calibration batch ({type(exc).__name__}: "
                           f"{exc}); pass batches it accepts: a tuple of args, a dict of kwargs or a "
                           "tensor") from exc


def _block_paths(model: nn.Module, site: BlockSite) -> list[tuple[str, str, int]]:
    """(block path, container path, index in container) of every block, in model order."""
    return [(f"{c}.{name}", c, i) for c in site.containers
            for i, name in enumerate(model.get_submodule(c)._modules)]


def block_influence(model: nn.Module, calib: Any, blocks: list[str] | None = None) -> dict[str, float]:
    """ShortGPT block influence ``1 - mean cos(input, output)`` of each block over ``calib`` batches.

    >>> import torch
    >>> seq = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(4, 4))
    >>> bi = block_influence(seq, [torch.randn(3, 4)], blocks=["0", "1"])
    >>> abs(bi["0"]) < 1e-6
    True
    """
    if blocks is None:
        site = find_blocks(model)
        if site is None:
            raise PruningError(type(model).__name__, "score blocks",
                               "no block container found; pass blocks=[paths]")
        blocks = [p for p, _, _ in _block_paths(model, site)]
    modules = [(p, model.get_submodule(p)) for p in blocks]
    scores, _ = _run_with_hooks(model, modules, calib_batches(calib, "model", "compute block influence"), True)
    return dict(zip(blocks, scores, strict=True))


# ----------------------------------------------------------------------------------------------
# Removal.


def _shorter(container: nn.Module, keep: list[int]) -> nn.Module:
    """A new container of the same type holding only the blocks at ``keep`` (renumbered if numeric)."""
    items = list(container._modules.items())
    kept = [items[i] for i in keep]
    numeric = all(k.isdigit() for k, _ in items)
    if type(container) in (nn.Sequential, nn.ModuleList):
        if numeric:
            new = type(container)([m for _, m in kept]) if isinstance(container, nn.ModuleList) \
                else nn.Sequential(*[m for _, m in kept])
        else:
            new = nn.Sequential(OrderedDict(kept)) if isinstance(container, nn.Sequential) \
                else nn.ModuleList([m for _, m in kept])
        new.train(container.training)
        return new
    new = copy.copy(container)  # a subclass: keep its type and attributes, only swap the children
    new._modules = OrderedDict((str(j) if numeric else k, m) for j, (k, m) in enumerate(kept))
    return new


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


def _choose_n(n: int | None, ratio: float | None, total: int, where: str) -> int:
    if (n is None) == (ratio is None):
        raise PruningError(where, OPERATION, "pass exactly one of n= (a block count) or ratio= (a fraction)")
    if ratio is not None:
        if not (isinstance(ratio, (int, float)) and 0.0 <= ratio < 1.0):
            raise PruningError(where, OPERATION, f"ratio={ratio!r} must be a fraction in [0, 1)")
        n = int(round(ratio * total))
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise PruningError(where, OPERATION, f"n={n!r} must be a non-negative integer")
    if n >= total:
        raise PruningError(where, OPERATION, f"n={n} would remove all {total} blocks; pass n <= {total - 1}")
    return n


def drop_layers(model: nn.Module, n: int | None = None, ratio: float | None = None,
                criterion: str | Callable[[nn.Module, list[str]], Sequence[float]] = "block_influence",
                calib: Any = None, example_inputs: Any = None, importance: Any = None) -> DropResult:
    """Remove ``n`` (or ``ratio`` of the) whole blocks of ``model`` in place, lowest importance first.

    ``criterion``: ``"block_influence"`` (ShortGPT, needs ``calib``: an iterable of batches, each a
    tuple of args, a dict of kwargs or a tensor), ``"last"`` (the deepest blocks go), or a callable
    ``f(model, block_paths) -> scores`` (lower = removed first). ResNet-like models only lose
    identity-shortcut blocks, found by running ``calib`` or ``example_inputs``. Every container keeps
    at least one block. On error, :class:`prunekit.PruningError` is raised and the model is unchanged.

    >>> import torch
    >>> enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 3)
    >>> res = drop_layers(enc, n=1, criterion="last")
    >>> res.removed_paths, len(enc.layers)
    (['layers.2'], 2)
    """
    importance = renamed("drop_layers", "importance", "criterion", importance, criterion, "block_influence")
    root = type(model).__name__
    site = find_blocks(model)
    if site is None:
        raise PruningError(root, OPERATION, "no block container found (known: Hugging Face layers, "
                           "nn.TransformerEncoder, ViT `blocks`, ResNet stages); drop blocks by hand or "
                           "add an adapter to prunekit.structured.blocks.ADAPTERS")
    where = ",".join(site.containers)
    listing = _block_paths(model, site)
    paths = [p for p, _, _ in listing]
    owner = {p: (c, i) for p, c, i in listing}
    n = _choose_n(n, ratio, len(paths), where)

    name = importance if isinstance(importance, str) else getattr(importance, "__name__", "callable")
    batches = None
    if importance == "block_influence":
        if calib is None:
            raise PruningError(where, OPERATION, "importance='block_influence' needs calib= (an iterable "
                               "of input batches, e.g. [example_inputs]); or pass importance='last'")
        batches = calib_batches(calib, where, OPERATION)
    elif not (importance == "last" or callable(importance)):
        raise PruningError(where, OPERATION, f"unknown importance {importance!r}; use 'block_influence', "
                           "'last' or a callable f(model, block_paths) -> scores")

    blocks = [(p, model.get_submodule(p)) for p in paths]
    droppable = [True] * len(paths)
    scores: list[float]
    if batches is not None:
        scores, droppable = _calibrate(model, blocks, batches, True, where)  # shape-changing: keep
    else:
        if site.needs_shape_check:
            probe = calib if calib is not None else ([example_inputs] if example_inputs is not None else None)
            if probe is None:
                raise PruningError(where, OPERATION, "pass example_inputs= (or calib=) so blocks that "
                                   "keep their input shape (identity shortcuts) can be told from "
                                   "downsampling ones")
            _, droppable = _calibrate(model, blocks, calib_batches(probe, where, OPERATION), False, where)
        if importance == "last":
            scores = [float(-i) for i in range(len(paths))]
        else:
            raw = importance(model, list(paths))
            scores = [float(s) for s in raw]
            if len(scores) != len(paths):
                raise PruningError(where, OPERATION, f"the importance callable returned {len(scores)} "
                                   f"scores for {len(paths)} blocks; return one per block path")
    if any(math.isnan(s) for s, d in zip(scores, droppable, strict=True) if d):
        bad = [p for p, s, d in zip(paths, scores, droppable, strict=True) if d and math.isnan(s)]
        raise PruningError(bad[0], OPERATION, "the block never ran on calib, so it has no score; "
                           "check that calib batches reach every block")

    left = {c: len(model.get_submodule(c)) for c in site.containers}
    chosen: list[int] = []
    for i in sorted((i for i in range(len(paths)) if droppable[i]), key=lambda i: (scores[i], -i)):
        if len(chosen) == n:
            break
        c = owner[paths[i]][0]
        if left[c] > 1:
            chosen.append(i)
            left[c] -= 1
    if len(chosen) < n:
        raise PruningError(where, OPERATION, f"only {len(chosen)} blocks can go (identity-shortcut blocks, "
                           f"at least one left per container); pass n <= {len(chosen)}")
    chosen.sort()

    params_before = count_params(model)
    result = DropResult(site.family, list(site.containers), paths, scores, chosen,
                        [paths[i] for i in chosen], name, params_before, params_before)
    if not chosen:
        return result

    gone = {owner[p] for p in result.removed_paths}
    kept = {c: [i for i in range(len(model.get_submodule(c))) if (c, i) not in gone] for c in site.containers}
    originals = {c: model.get_submodule(c) for c in site.containers}
    replaced: list[str] = []
    undo: list[Callable[[], None]] = []
    try:
        for c in site.containers:
            if len(kept[c]) != len(originals[c]):
                _replace(model, c, _shorter(originals[c], kept[c]))
                replaced.append(c)
        if site.fixup is not None:
            site.fixup(model, kept, undo)
    except Exception as exc:
        for u in reversed(undo):
            u()
        for c in replaced:
            _replace(model, c, originals[c])
        raise PruningError(where, OPERATION, f"{type(exc).__name__}: {exc}; the model was restored") from exc
    guard_save_pretrained(model)
    result.params_after = count_params(model)
    return result
