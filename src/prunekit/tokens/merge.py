"""``merge(model, r)``: token merging patched into a trained transformer, reversibly, no retraining.

ToMe: Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman, "Token Merging: Your ViT but Faster", ICLR 2023.
Between the attention and the MLP of every layer, ``r`` tokens are merged into their most similar
partner (bipartite soft matching on the attention keys averaged over heads, see
:mod:`prunekit.tokens.matching`); token sizes are tracked and attention is proportional
(``log(size)`` added to the logits, passed to ``F.scaled_dot_product_attention`` as an additive mask so
the fused kernel is kept).

How it is wired, for every family (:mod:`prunekit.tokens.adapters`): the model's own ``forward`` is
left alone; only its layer stack (timm ``blocks``, HF ``encoder.layer`` / ``layers``, torch
``TransformerEncoder.layers``) is switched to a subclass whose call / iteration runs the layers through
the engine below. All per-forward state (sizes, source positions) lives in local variables of that one
call. The stack returns its tokens un-merged to full length, so heads, poolers and dense decoders see
the shape they expect, and averaging them is the size-weighted average of the merged tokens.
:func:`unpatch` switches the class back and removes every attribute added.

>>> import timm, torch
>>> vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=4).eval()
>>> x = torch.randn(2, 3, 64, 64)
>>> dense = vit(x)
>>> _ = merge(vit, r=0)
>>> bool((vit(x) - dense).abs().max() < 1e-5)
True
>>> _ = merge(vit, r=4, trace_source=True)
>>> _ = vit(x)
>>> last_info(vit).tokens            # 1 class token + 16 patches, 4 merged per block
[13, 9, 5, 3]
>>> _ = unpatch(vit)
>>> bool((vit(x) - dense).abs().max() == 0)
True
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.tokens.adapters import ADAPTERS, Adapter, Target
from prunekit.tokens.groups import LocalMerge, group_matching, window_groups, window_layout
from prunekit.tokens.matching import attention_bias, bipartite_soft_matching, merge_positions, merge_wavg, unmerge
from prunekit.tokens.prune import class_attention, fuse_inattentive, keep_tokens, topk_keep
from prunekit.tokens.saliency import SaliencyMerge, background_matching, saliency_from_qk
from prunekit.tokens.schedule import Constant, PerLayer, RSpec, Schedule, as_schedule, solve_for_macs

__all__ = ["merge", "unpatch", "is_patched", "last_info", "schedule_of", "MergeConfig", "TokenInfo",
           "run_layers"]


@dataclass
class MergeConfig:
    """What a patched model does; shared by all stacks patched by one :func:`merge` call."""

    schedule: Schedule
    prop_attn: bool = True
    trace_source: bool = False
    reducer: str = "merge"  # "merge" (ToMe), "drop" (top-k by class attention) or "fuse" (EViT)
    local: LocalMerge | None = None  # a local stage (windows / tubes) before the global merging
    saliency: SaliencyMerge | None = None  # an early stage merging the background, salient tokens kept out


@dataclass
class TokenInfo:
    """What the last forward of a ``trace_source=True`` model did (``last_info(model)``).

    ``positions[b, j]`` is the index, among the final tokens, of the token that original token ``j``
    ended in (-1: dropped); ``size`` ``(B, N', 1)`` counts the original (real) tokens in each;
    ``r`` and ``tokens`` are the merges and the token count after each layer. ``saliency`` ``(B, N)``:
    each original token's score, with a :class:`~prunekit.tokens.saliency.SaliencyMerge` stage.
    """

    r: list[int]
    tokens: list[int]
    size: torch.Tensor | None
    positions: torch.Tensor | None
    num_protected: int
    saliency: torch.Tensor | None = None


@dataclass
class _Patch:
    adapter: Adapter
    target: Target
    config: MergeConfig
    root: nn.Module
    original_class: type
    extra: dict[str, Any] = field(default_factory=dict)


def run_layers(adapter: Adapter, layers: list[nn.Module], x: torch.Tensor, valid: torch.Tensor | None,
               config: MergeConfig, num_protected: int, groups: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, TokenInfo | None]:
    """Run ``layers`` on tokens ``x`` ``(B, N, C)``, reducing tokens between attention and MLP.

    ``valid`` ``(B, N)`` marks real tokens (padding gets size 0). ``groups``: the window of every
    unprotected token (:func:`~prunekit.tokens.groups.window_groups`), for ``config.local``. Returns
    the final tokens (restored to ``N`` when merging) and, with ``config.trace_source``, a
    :class:`TokenInfo`.
    """
    B, n0, _ = x.shape
    p = num_protected
    local = config.local
    stage = config.saliency
    if stage is not None:
        if valid is not None:
            raise ValueError("saliency-aware merging does not handle padded tokens")
        rs = stage.plan(config.schedule, len(layers), n0, p)
        early, kept = range(stage.layer, stage.layer + stage.early), stage.kept(n0, p)
    elif local is None:
        rs = config.schedule.per_layer(len(layers), n0, p)
    else:  # the schedule is laid over the layers after the local stage, once its token count is known
        if groups is None:
            raise ValueError("config.local needs the token groups (window_groups of the stack's grid)")
        rs = [0] * len(layers)
    done: list[int] = []
    has_pad = valid is not None
    size = valid[..., None].to(x.dtype) if has_pad else None
    merging = config.reducer == "merge"
    track = merging or config.trace_source
    positions: torch.Tensor | None = None
    n, counts = n0, []
    saliency = None
    for i, (layer, r) in enumerate(zip(layers, rs, strict=True)):
        bias = attention_bias(size, config.prop_attn, x.dtype, has_pad)
        x, q, k = adapter.attention(layer, x, bias)
        match = None
        if local is not None and i == local.layer:
            match = group_matching(k.mean(1), groups, local.count, num_protected=p, threshold=local.threshold)
            r = match.r
            rs[i + 1:] = config.schedule.per_layer(len(layers) - i - 1, n - r, p)
        if r > 0:
            if merging:
                if stage is not None and i in early:  # the background only; scored in the stage's first block
                    if i == stage.layer:
                        with torch.no_grad():
                            saliency = saliency_from_qk(q, k, bias, stage.query_stride)
                    match = background_matching(k.mean(1), r, kept=kept, num_protected=p, size=size,
                                                scores=saliency if i == stage.layer else None)
                if match is None:
                    match = bipartite_soft_matching(k.mean(1), r, num_protected=p,
                                                    valid=size[..., 0] > 0 if has_pad else None)
                x, size = merge_wavg(match, x, size)
                if track:
                    positions = merge_positions(match, positions, n, B, x.device)
            elif config.reducer == "fuse":
                scores = class_attention(q, k, bias)
                keep = topk_keep(scores, r + 1, p)   # r + 1 inattentive tokens become one: r fewer
                if size is None and (track or config.prop_attn):   # the fused token stands for several
                    size = x.new_ones(B, n, 1)
                x, size = fuse_inattentive(x, size, scores, keep)
                if track:
                    positions = _drop_positions(keep, positions, n, B, x.device, fill=keep.shape[1])
            else:
                keep = topk_keep(class_attention(q, k, bias), r, p)
                x = keep_tokens(x, keep)
                size = keep_tokens(size, keep) if size is not None else None
                if track:
                    positions = _drop_positions(keep, positions, n, B, x.device)
            n -= r
        done.append(r)
        counts.append(n)
        x = adapter.mlp(layer, x)
    info = None
    if config.trace_source:
        info = TokenInfo(done, counts, size if size is not None else x.new_ones(B, n, 1), positions, p, saliency)
    if merging and positions is not None:
        x = unmerge(x, positions)
    return x, info


def _drop_positions(keep: torch.Tensor, positions: torch.Tensor | None, n: int, batch: int,
                    device: torch.device, fill: int = -1) -> torch.Tensor:
    """Where each original token is after keeping ``keep``: the others go to ``fill`` (-1: dropped; EViT:
    the index of the fused token)."""
    layer_map = torch.full((batch, n), fill, dtype=torch.long, device=device)
    layer_map.scatter_(1, keep, torch.arange(keep.shape[1], device=device).expand_as(keep))
    if positions is None:
        return layer_map
    return torch.where(positions >= 0, layer_map.gather(1, positions.clamp_min(0)), positions)


def _run_stack(container: nn.Module, *args, **kwargs):
    patch: _Patch = container.__dict__["_tome"]
    x, valid, leave = patch.adapter.enter(patch.target, *args, **kwargs)
    x, info = run_layers(patch.adapter, list(container._modules.values()), x, valid, patch.config,
                         patch.target.num_protected, patch.extra.get("groups"))
    if info is not None:
        patch.root.__dict__["_tome_info"] = info
    return leave(x)


class TokenMergingSequential(nn.Sequential):
    """An ``nn.Sequential`` of transformer blocks whose call merges tokens (set by :func:`merge`)."""

    def forward(self, *args, **kwargs):
        if "_tome" not in self.__dict__:
            return super().forward(*args, **kwargs)
        return _run_stack(self, *args, **kwargs)


class _Stack:
    """What iterating a patched ``ModuleList`` yields: one callable running every layer."""

    __slots__ = ("container",)

    def __init__(self, container: nn.Module):
        self.container = container

    def __call__(self, *args, **kwargs):
        return _run_stack(self.container, *args, **kwargs)


class TokenMergingModuleList(nn.ModuleList):
    """An ``nn.ModuleList`` of layers whose iteration yields a single merging stack (set by :func:`merge`).

    Indexing, ``len`` and ``state_dict`` are unchanged; only ``for layer in layers`` differs while patched.
    """

    def __iter__(self):
        if "_tome" not in self.__dict__:
            return super().__iter__()
        return iter([_Stack(self)])


_PATCHED_CLASS = {nn.Sequential: TokenMergingSequential, nn.ModuleList: TokenMergingModuleList}


def is_patched(model: nn.Module) -> bool:
    """Whether :func:`merge` (or :func:`prunekit.tokens.drop`) has patched ``model`` or a submodule."""
    from prunekit.tokens.windowed import is_window_patched
    return any("_tome" in m.__dict__ for m in model.modules()) or is_window_patched(model)


def _patches(model: nn.Module) -> list[_Patch]:
    return [m.__dict__["_tome"] for m in model.modules() if "_tome" in m.__dict__]


def last_info(model: nn.Module) -> TokenInfo | None:
    """The :class:`TokenInfo` of the last forward of a model patched with ``trace_source=True``
    (also stored as ``model._tome_info``)."""
    return model.__dict__.get("_tome_info")


def schedule_of(model: nn.Module) -> Schedule | None:
    """The schedule a patched model uses (e.g. the one solved for ``target_macs``); for a windowed
    backbone, the tokens merged per window in each block."""
    patches = _patches(model)
    if patches:
        return patches[0].config.schedule
    from prunekit.tokens.windowed import KEY
    rs = [m.__dict__[KEY].r for m in model.modules() if KEY in m.__dict__]
    return PerLayer(rs) if rs else None


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`merge` / :func:`prunekit.tokens.drop`: the model is exactly as before (same classes,
    no added attributes, identical outputs). A model that is not patched is returned unchanged."""
    from prunekit.tokens.windowed import unpatch_windows
    unpatch_windows(model)
    for patch in _patches(model):
        container = patch.target.container
        patch.adapter.uninstall(patch.target)
        container.__class__ = patch.original_class
        del container.__dict__["_tome"]
        patch.root.__dict__.pop("_tome_info", None)
    model.__dict__.pop("_tome_info", None)
    return model


def merge(model: nn.Module, r: RSpec = 0, *, prop_attn: bool = True, trace_source: bool = False,
          target_macs: float | None = None, example_inputs: Any = None, num_protected: int | None = None,
          reducer: str = "merge", local: LocalMerge | None = None, saliency: SaliencyMerge | None = None
          ) -> nn.Module:
    """Patch ``model`` in place to merge tokens in every transformer layer; returns ``model``.

    ``r``: tokens merged per layer — an int (constant), a list (per layer) or a schedule from
    :mod:`prunekit.tokens.schedule`. ``target_macs``: instead of ``r``, the fraction of the dense MACs
    to keep (e.g. 0.62 for 38% fewer); the smallest constant ``r`` reaching it is solved for with
    :func:`prunekit.measure.count_macs` on ``example_inputs``. ``prop_attn``: proportional attention.
    ``trace_source``: keep the last forward's :class:`TokenInfo` (``last_info(model)``).
    ``num_protected``: override the number of leading tokens never merged (default: the family's
    prefix tokens). ``local``: a :class:`~prunekit.tokens.groups.LocalMerge` stage merging whole windows
    (or time tubes) of alike neighbours first; ``r`` then schedules the layers after it, as if they were
    the whole stack (layers before it merge nothing; timm ViTs; see
    :func:`prunekit.tokens.merge_dense`, :func:`prunekit.tokens.merge_video`). ``saliency``: a
    :class:`~prunekit.tokens.saliency.SaliencyMerge` stage instead, merging the background first with the
    salient tokens kept out; ``r`` then schedules the layers after it (unpadded tokens only; see
    :func:`prunekit.tokens.merge_video`). Patching an already patched model replaces the old patch.

    Supported: timm ``VisionTransformer`` family, Hugging Face BERT-style encoders and ViT/DeiT,
    ``nn.TransformerEncoder``; and windowed backbones (timm Swin v1, SAM-style ``VisionTransformerSAM``),
    where ``r`` (an int or a per-block list) is the number of tokens merged in every attention window
    and each block un-merges its windows again (:mod:`prunekit.tokens.windowed`). Unsupported layers
    raise ``NotImplementedError`` before anything changes.

    >>> import torch
    >>> enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 3)
    >>> _ = merge(enc.eval(), r=2)
    >>> enc(torch.randn(2, 10, 32)).shape            # restored to the input length
    torch.Size([2, 10, 32])
    >>> _ = unpatch(enc)
    """
    if reducer not in ("merge", "drop", "fuse"):
        raise ValueError(f"reducer must be 'merge', 'drop' or 'fuse', got {reducer!r}")
    if local is not None and reducer != "merge":
        raise ValueError("a local merging stage needs reducer='merge'")
    if saliency is not None and (reducer != "merge" or local is not None):
        raise ValueError("a saliency stage needs reducer='merge' and no local stage")
    if saliency is not None and not isinstance(saliency, SaliencyMerge):
        raise TypeError(f"saliency must be a prunekit.tokens.saliency.SaliencyMerge, got {type(saliency).__name__}")
    if local is not None and not isinstance(local, LocalMerge):
        raise TypeError(f"local must be a prunekit.tokens.LocalMerge, got {type(local).__name__}")
    from prunekit.tokens import windowed
    blocks = windowed.windowed_blocks(model)   # Swin / SAM: merged inside each attention window
    if blocks:
        return _merge_windowed(model, blocks, r, prop_attn, trace_source, target_macs, example_inputs, reducer,
                               local, saliency)
    if local is not None:
        _check_local(model, local, as_schedule(r))  # before unpatching: a refused call keeps the old patch
    unpatch(model)
    found: list[tuple[Adapter, Target]] = []
    for adapter in ADAPTERS:
        found += [(adapter, t) for t in adapter.targets(model)]
    if not found:
        raise NotImplementedError(f"no supported transformer layer stack in {type(model).__name__} "
                                  "(timm VisionTransformer, HF BERT/ViT/DeiT, nn.TransformerEncoder)")
    for _, t in found:
        if type(t.container) not in _PATCHED_CLASS:
            raise NotImplementedError(f"layer container {type(t.container).__name__} is not patchable")
        if num_protected is not None:
            t.num_protected = int(num_protected)
        if local is not None and t.grid is None:  # e.g. an HF encoder beside a timm ViT
            raise PruningError(type(t.owner).__name__, "merge tokens locally",
                               "its layer stack has no token grid; only timm ViTs have one here")
    config = MergeConfig(as_schedule(r), prop_attn, trace_source, reducer, local, saliency)
    try:
        for adapter, t in found:
            patch = _Patch(adapter, t, config, model, type(t.container))
            if local is not None:  # computed once here, not in every forward
                patch.extra["groups"] = window_layout(t.grid, local.window)
            adapter.install(t)
            t.container.__dict__["_tome"] = patch
            t.container.__class__ = _PATCHED_CLASS[patch.original_class]
        if target_macs is not None:
            config.schedule = _solve_target(model, config, target_macs, example_inputs)
    except BaseException:
        unpatch(model)
        raise
    return model


def _merge_windowed(model: nn.Module, blocks: list, r: RSpec, prop_attn: bool, trace_source: bool,
                    target_macs: float | None, example_inputs: Any, reducer: str, local: LocalMerge | None,
                    saliency: SaliencyMerge | None) -> nn.Module:
    """:func:`merge` on a windowed backbone: ``r`` tokens merged per attention window in every block
    (:mod:`prunekit.tokens.windowed`), after ``local``'s groups of neighbours (merge_dense); options that
    need one shrinking token sequence are refused."""
    from prunekit.measure import count_macs
    from prunekit.tokens import windowed
    name, op = type(model).__name__, "merge tokens inside attention windows"
    refused = [(saliency is not None, "a saliency stage (merge_video)"),
               (reducer != "merge", f"reducer={reducer!r} (top-k drop and EViT need a class token)")]
    # trace_source is accepted and records nothing (last_info stays None): each block un-merges its windows
    for bad, what in refused:
        if bad:
            raise PruningError(name, op, f"{what} is not supported in windowed attention")
    if target_macs is not None:
        if example_inputs is None:
            raise ValueError("target_macs needs example_inputs to count MACs on")
        if not 0 < target_macs <= 1:
            raise PruningError(name, op, f"target_macs must be in (0, 1], got {target_macs}")
    else:
        windowed.plan(blocks, r)   # checked before anything changes
    if local is not None:
        windowed.check_local(blocks, local)
    unpatch(model)
    if target_macs is None:
        return windowed.merge_in_windows(model, blocks, r, prop_attn, local=local)
    inputs = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)

    def macs_at(value: int) -> int:
        windowed.unpatch_windows(model)
        windowed.merge_in_windows(model, blocks, value, prop_attn, local=local)
        return count_macs(model, tuple(inputs))

    try:
        dense, lo = macs_at(0), 0
        hi = max(windowed.window_tokens(b) for _, b, _ in blocks) // 2
        floor = macs_at(hi)
        if floor > target_macs * dense:
            warnings.warn(f"target_macs={target_macs} is out of reach: merging half of every window keeps "
                          f"{floor / dense:.3f} of the MACs", stacklevel=3)
            lo = hi
        while lo < hi:   # the smallest r per window whose MACs reach the target
            mid = (lo + hi) // 2
            if macs_at(mid) <= target_macs * dense:
                hi = mid
            else:
                lo = mid + 1
    finally:
        windowed.unpatch_windows(model)
    return windowed.merge_in_windows(model, blocks, lo, prop_attn, local=local)


def _check_local(model: nn.Module, local: LocalMerge, schedule: Schedule) -> None:
    """Refuse, before anything changes, a local stage that ``model``'s timm ViTs cannot run."""
    from timm.models.vision_transformer import VisionTransformer

    from prunekit.tokens.adapters.timm import token_grid
    op = "merge tokens locally"
    vits = [(name or type(m).__name__, m) for name, m in model.named_modules() if isinstance(m, VisionTransformer)]
    if not vits:
        raise PruningError(type(model).__name__, op, "it holds no timm VisionTransformer, whose token grid local "
                           "merging needs; use plain merge(model, r=...)")
    for name, vit in vits:
        grid = token_grid(vit)
        if grid is None:
            raise PruningError(name, op, "its token grid is not fixed (dynamic_img_size=True?); build it with "
                               "a fixed img_size")
        if local.layer >= len(vit.blocks):
            raise PruningError(name, op, f"LocalMerge.layer={local.layer}, but it has {len(vit.blocks)} blocks "
                               f"(0 to {len(vit.blocks) - 1})")
        try:
            window_groups(grid, local.window)
        except ValueError as err:
            raise PruningError(name, op, f"{err}; choose a smaller window") from None
        after = len(vit.blocks) - local.layer - 1
        if isinstance(schedule, PerLayer) and len(schedule.values) > after:
            raise PruningError(name, op, f"{len(schedule.values)} per-layer r values, but only {after} blocks "
                               f"follow the local stage in block {local.layer}; the list is for those")


def _solve_target(model: nn.Module, config: MergeConfig, fraction: float, example_inputs: Any) -> Schedule:
    from prunekit.measure import count_macs
    if example_inputs is None:
        raise ValueError("target_macs needs example_inputs to count MACs on")
    trace = config.trace_source
    config.trace_source = False

    def macs_of(schedule: Schedule) -> int:
        config.schedule = schedule
        return count_macs(model, example_inputs)

    try:
        local, config.local = config.local, None  # the fraction is of the dense model's MACs
        stage, config.saliency = config.saliency, None
        try:
            dense = macs_of(Constant(0))
        finally:
            config.local, config.saliency = local, stage
        limit = 1024  # clipping makes MACs flat past the largest useful r
        best = solve_for_macs(macs_of, dense, fraction, limit)
        floor = macs_of(Constant(limit))
        if floor > fraction * dense:
            warnings.warn(f"target_macs={fraction} is out of reach: merging as much as possible keeps "
                          f"{floor / dense:.3f} of the MACs", stacklevel=3)
            best = solve_for_macs(macs_of, dense, min(1.0, (floor + 0.5) / dense), limit)
    finally:
        config.trace_source = trace
    return best
