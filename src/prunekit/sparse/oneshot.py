"""``sparsify``: one-shot unstructured, N:M or block sparsity with masks that survive training.

Everything is validated and every mask is computed before the first weight changes, so a call that
raises leaves the model exactly as it was. SparseGPT (:mod:`prunekit.sparse.sparsegpt`) rewrites the
weights layer by layer while it calibrates; it puts every weight and mask back if it fails. OWL layer
ratios (:mod:`prunekit.sparse.owl`) replace the uniform ratio with ``scope="owl"``.

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
>>> res = sparsify(net, 0.75)
>>> res.total, res.layers
(0.75, {'0': 0.75})
>>> sparsify(net, 0.5, pattern="2:4").total
0.5
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.calib import calib_batches
from prunekit.compat import renamed
from prunekit.errors import PruningError
from prunekit.sparse import masks as M
from prunekit.sparse.masking import MASK_NAME, attach_mask, is_masked
from prunekit.sparse.owl import OWL, allocate, block_groups, outlier_share, owl_ratios
from prunekit.sparse.sequential import sparsegpt_layers
from prunekit.sparse.sparsegpt import SparseGPT, tile_shape
from prunekit.sparse.targets import default_targets, input_norms, output_layer

__all__ = ["sparsify", "SparsityResult", "METHODS", "SCOPES"]

METHODS = ("magnitude", "wanda", "random", "sparsegpt")
SCOPES = ("global", "local", "owl")
CALIBRATED = ("wanda", "sparsegpt")


def local_scope(scope: str, where: str) -> str:
    """``scope``, with the old name ``"layer"`` read as ``"local"`` (the name prune uses), with a warning."""
    if scope == "layer":
        import warnings
        warnings.warn(f"{where}: scope='layer' is deprecated, use scope='local' (the same meaning)",
                      DeprecationWarning, stacklevel=3)
        return "local"
    return scope


@dataclass
class SparsityResult:
    """What ``sparsify`` did: the achieved sparsity per target layer and over all targets."""

    method: str
    pattern: str
    scope: str
    target: float
    layers: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    numel: int = 0
    pruned: int = 0
    untouched: dict[str, int] = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        """Share of the model's weight matrices (parameters of 2+ dims) that were sparsified at all."""
        rest = sum(self.untouched.values())
        return self.numel / (self.numel + rest) if self.numel + rest else 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        width = max([len(n) for n in self.layers] + [5])
        lines = [f"sparsify: method={self.method} pattern={self.pattern} scope={self.scope} target={self.target:.4g}",
                 f"{'layer':<{width}}  sparsity"]
        lines += [f"{n:<{width}}  {s:8.4f}" for n, s in self.layers.items()]
        lines.append(f"{'total':<{width}}  {self.total:8.4f}  ({self.pruned:,} of {self.numel:,} weights zero)")
        return "\n".join(lines)


def _name(option: Any) -> Any:
    """The name of a criterion or scope given as a settings object (``SparseGPT()``, ``OWL()``)."""
    return option.name if isinstance(option, (SparseGPT, OWL)) else option


def _check_args(sparsity: float | None, method: Any, scope: Any, pattern: str, calib: Any) -> tuple[float, M.Pattern]:
    op = "sparsify"
    method, scope = _name(method), _name(scope)
    if method not in METHODS:
        raise PruningError("model", op, f"unknown method {method!r}; use one of {METHODS}")
    if scope not in SCOPES:
        raise PruningError("model", op, f"unknown scope {scope!r}; use one of {SCOPES}")
    try:
        pat = M.parse_pattern(pattern)
    except ValueError as e:
        raise PruningError("model", op, str(e)) from None
    if pat.kind == "nm":
        if sparsity is None:
            sparsity = pat.sparsity
        elif not math.isclose(float(sparsity), pat.sparsity, abs_tol=1e-6):
            raise PruningError("model", op, f"pattern {pattern} fixes the sparsity at {pat.sparsity:g}, "
                                            f"but sparsity={sparsity!r} was asked (pass {pat.sparsity:g} or None)")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise PruningError("model", op, f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if method in CALIBRATED and calib is None:
        raise PruningError("model", op, f"criterion={method!r} needs calib= (batches of inputs)")
    if scope == "owl" and calib is None:
        raise PruningError("model", op, "scope='owl' needs calib= (batches of inputs) for the outlier scores")
    if scope == "owl" and pat.kind == "nm":
        raise PruningError("model", op, f"scope='owl' sets a sparsity per layer, but pattern {pat} fixes every "
                                        f"layer's at {pat.sparsity:g}; use an unstructured or block pattern")
    return float(sparsity), pat


def _check_shapes(targets: list[tuple[str, nn.Module]], pat: M.Pattern) -> None:
    for name, mod in targets:
        w = mod.weight
        k = M.as_matrix(w).shape[1]
        if pat.kind == "nm" and k % pat.m:
            raise PruningError(name, f"apply {pat} sparsity",
                               f"input dimension {k} (in*kh*kw) is not divisible by M={pat.m}; add it to ignore=")
        if pat.kind == "block":
            mat = M.as_matrix(w)
            if mat.shape[0] % pat.n or mat.shape[1] % pat.m:
                raise PruningError(name, f"apply {pat} sparsity",
                                   f"weight matrix {tuple(mat.shape)} does not tile into {pat.n}x{pat.m} blocks; "
                                   "add it to ignore=")


def _wanda_norm(mod: nn.Module, norm: torch.Tensor) -> torch.Tensor:
    """Per-(output, input) norms for grouped convs; the plain per-input vector otherwise."""
    groups = getattr(mod, "groups", 1)
    if groups == 1:
        return norm
    out, in_pg = mod.weight.shape[:2]
    return norm.view(groups, in_pg).repeat_interleave(out // groups, 0)


def _scores(method: str, targets: list[tuple[str, nn.Module]], norms: dict, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, mod in targets:
        w = mod.weight.detach()
        if is_masked(mod):  # score what the forward uses: an optimizer may have moved masked weights since
            w = w * getattr(mod, MASK_NAME)
        if method == "magnitude":
            s = M.magnitude_scores(w)
        elif method == "random":
            s = M.random_scores(w, gen)
        else:
            norm = _wanda_norm(mod, norms[name].to(w.device))
            if norm.dim() == 2:
                s = w.abs().float() * norm.reshape(norm.shape + (1,) * (w.dim() - 2))
            else:
                s = M.wanda_scores(w.float(), norm)
        out.append(s if s.dtype in (torch.float32, torch.float64) else s.float())
    return out


def _units(targets: list[tuple[str, nn.Module]], pat: M.Pattern) -> list[int]:
    """How many tiles (weights, or ``block:HxW`` blocks) each target holds."""
    th, tw = tile_shape(pat)
    return [mod.weight.numel() // (th * tw) for _, mod in targets]


def _owl_counts(model: nn.Module, targets: list[tuple[str, nn.Module]], norms: dict, sparsity: float,
                pat: M.Pattern, owl: OWL) -> list[int]:
    """Tiles to remove per target: OWL's ratios from the Wanda scores (pooled per block unless
    ``owl.blocks`` is off), adding up to the global count."""
    blocks = [f"{n}.{c}" if n else c for n, m in model.named_modules() if isinstance(m, nn.ModuleList)
              for c, _ in m.named_children()] if owl.blocks else []
    groups = block_groups([n for n, _ in targets], blocks)
    scores = _scores("wanda", targets, norms, 0)
    shares = [outlier_share(torch.cat([scores[i].reshape(-1) for i in g]), owl.threshold) for g in groups]
    units = _units(targets, pat)
    sizes = [sum(units[i] for i in g) for g in groups]
    per_group = allocate(owl_ratios(shares, sizes, sparsity, owl.band), sizes, M.num_to_prune(sparsity, sum(units)))
    counts = [0] * len(targets)
    for g, k, size in zip(groups, per_group, sizes, strict=True):  # one ratio for a block's layers
        for i, c in zip(g, allocate([k / size] * len(g), [units[i] for i in g], k), strict=True):
            counts[i] = c
    return counts


def _counted_masks(scores: list[torch.Tensor], counts: list[int], method: str,
                   pat: M.Pattern) -> list[torch.Tensor]:
    """Per-layer masks that remove ``counts[i]`` tiles of layer ``i`` (OWL's ratios)."""
    out = []
    for s, k in zip(scores, counts, strict=True):
        if pat.kind == "block":
            units = s.numel() // (pat.n * pat.m)
            out.append(M.block_masks([s], k / units, pat.n, pat.m)[0])
        elif method == "wanda":
            out.append(M.spread_row_masks(s, k))
        else:
            out.append(M.unstructured_masks([s], k / s.numel())[0])
    return out


def _masks(scores: list[torch.Tensor], sparsity: float, method: str, scope: str,
           pat: M.Pattern) -> list[torch.Tensor]:
    if pat.kind == "nm":
        return [M.nm_mask(s, pat.n, pat.m) for s in scores]
    if pat.kind == "block":
        if scope == "global" and method != "wanda":
            return M.block_masks(scores, sparsity, pat.n, pat.m)
        return [M.block_masks([s], sparsity, pat.n, pat.m)[0] for s in scores]
    if method == "wanda":
        return [M.row_masks(s, sparsity) for s in scores]
    if scope == "global":
        return M.unstructured_masks(scores, sparsity)
    return [M.unstructured_masks([s], sparsity)[0] for s in scores]


def sparsify(model: nn.Module, sparsity: float | None, *, criterion: str | SparseGPT = "magnitude",
             scope: str | OWL = "global", pattern: str = "unstructured", calib: Any = None,
             ignore: Iterable[Any] = (), seed: int = 0, method: str | None = None) -> SparsityResult:
    """Zero the least important weights of ``model``'s Linear and Conv2d layers, in place, and keep them zero.

    Args:
        sparsity: fraction of target weights to remove, in ``[0, 1)``. For ``"N:M"`` it must be
            ``1 - N/M`` or ``None``.
        criterion: ``"magnitude"`` (|W|), ``"wanda"`` (|W|·‖X‖₂, per output row; needs ``calib``),
            ``"sparsegpt"`` (OBS updates of the kept weights, layer by layer; needs ``calib``; pass
            :class:`~prunekit.sparse.sparsegpt.SparseGPT` to set its dampening) or ``"random"``
            (``method=`` is its old name, deprecated).
        scope: ``"global"`` (one threshold over all targets), ``"local"`` (each layer gets
            ``sparsity``) or ``"owl"`` (per-layer ratios from the outlier share of the Wanda scores,
            ``sparsity`` over all targets; needs ``calib``; pass :class:`~prunekit.sparse.owl.OWL` to
            set its threshold and band). Wanda always compares within each output row and SparseGPT
            within each layer, so for them ``"global"`` is ``"local"``; N:M compares within each group.
        pattern: ``"unstructured"``, ``"N:M"`` (e.g. ``"2:4"``) or ``"block:HxW"``.
        calib: calibration inputs for wanda, sparsegpt and owl: a tensor, one batch in the
            ``example_inputs`` form, or an iterable of batches (see :mod:`prunekit.calib`).
        ignore: module names, fnmatch patterns, module instances or types to leave dense (the
            output layer is always left dense).
        seed: seed of ``method="random"``.

    ``result.untouched`` names the weight matrices no target covers (recurrent layers, attention
    in-projections held as bare parameters, embeddings, ignored layers) and ``result.coverage`` the
    share of weights that were sparsified at all. Masks stay attached (one bool per weight, see
    :mod:`prunekit.sparse.masking`) until :func:`prunekit.finalize`. A new call replaces earlier
    masks. Raises ``PruningError`` and leaves the model unchanged on bad input.

    >>> import torch
    >>> lin = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    >>> sparsify(lin, 0.5, criterion="wanda", calib=torch.randn(32, 8)).layers
    {'0': 0.5}
    >>> sparsify(lin, 0.5, criterion="sparsegpt", calib=torch.randn(32, 8)).layers
    {'0': 0.5}
    """
    criterion = renamed("sparsify", "method", "criterion", method, criterion, "magnitude")
    scope = local_scope(scope, "sparsify")
    sparsity, pat = _check_args(sparsity, criterion, scope, pattern, calib)
    method, gpt = _name(criterion), criterion if isinstance(criterion, SparseGPT) else SparseGPT()
    owl = scope if isinstance(scope, OWL) else OWL() if scope == "owl" else None
    scope = _name(scope)
    targets = default_targets(model, ignore)
    if not targets:
        raise PruningError("model", "sparsify", "no Linear or Conv2d layer to sparsify (all ignored?)")
    _check_shapes(targets, pat)
    batches = calib_batches(calib, "model", "sparsify") if calib is not None else None
    norms = input_norms(model, targets, batches) if method == "wanda" or owl else {}
    with torch.no_grad():
        counts = _owl_counts(model, targets, norms, sparsity, pat, owl) if owl else None
        if method == "sparsegpt":
            if counts is None:
                counts = [M.num_to_prune(sparsity, u) for u in _units(targets, pat)]
            pruned = {name: k for (name, _), k in zip(targets, counts, strict=True)}
            masks = list(sparsegpt_layers(model, targets, batches, pruned, pat, gpt).values())
        elif counts is not None:
            masks = _counted_masks(_scores(method, targets, norms, seed), counts, method, pat)
        else:
            masks = _masks(_scores(method, targets, norms, seed), sparsity, method, scope, pat)
    result = SparsityResult(method, str(pat), scope, sparsity)
    for (name, mod), mask in zip(targets, masks, strict=True):
        if method != "sparsegpt":  # sparsegpt attached each mask with its new weights
            attach_mask(mod, mask)
        zeros = mask.numel() - int(mask.sum())
        result.layers[name] = round(zeros / mask.numel(), 6)
        result.numel += mask.numel()
        result.pruned += zeros
    result.total = round(result.pruned / result.numel, 6)
    covered = {id(m.weight) for _, m in targets}
    head = output_layer(model)
    skip = {id(p) for p in head.parameters()} if head is not None else set()
    for pname, p in model.named_parameters():  # what no target covers: LSTM, MHA in_proj, embeddings, ...
        if p.dim() >= 2 and id(p) not in covered and id(p) not in skip:
            result.untouched[pname] = p.numel()
    return result
