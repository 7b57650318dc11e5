"""``sparsify``: one-shot unstructured, N:M or block sparsity with masks that survive training.

Everything is validated and every mask is computed before the first weight changes, so a call that
raises leaves the model exactly as it was.

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

from prunekit.compat import renamed
from prunekit.errors import PruningError
from prunekit.sparse import masks as M
from prunekit.sparse.masking import MASK_NAME, attach_mask, is_masked
from prunekit.sparse.targets import default_targets, input_norms, output_layer

__all__ = ["sparsify", "SparsityResult", "METHODS", "SCOPES"]

METHODS = ("magnitude", "wanda", "random")
SCOPES = ("global", "local")


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


def _check_args(sparsity: float | None, method: str, scope: str, pattern: str, calib: Any) -> tuple[float, M.Pattern]:
    op = "sparsify"
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
    if method == "wanda" and calib is None:
        raise PruningError("model", op, "method='wanda' needs calib= (batches of inputs) for the input norms")
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


def sparsify(model: nn.Module, sparsity: float | None, *, criterion: str = "magnitude", scope: str = "global",
             pattern: str = "unstructured", calib: Any = None, ignore: Iterable[Any] = (),
             seed: int = 0, method: str | None = None) -> SparsityResult:
    """Zero the least important weights of ``model``'s Linear and Conv2d layers, in place, and keep them zero.

    Args:
        sparsity: fraction of target weights to remove, in ``[0, 1)``. For ``"N:M"`` it must be
            ``1 - N/M`` or ``None``.
        criterion: ``"magnitude"`` (|W|), ``"wanda"`` (|W|·‖X‖₂, per output row; needs ``calib``) or
            ``"random"`` (``method=`` is its old name, deprecated).
        scope: ``"global"`` (one threshold over all targets) or ``"local"`` (each layer gets
            ``sparsity``). Wanda always compares within each output row; N:M within each group.
        pattern: ``"unstructured"``, ``"N:M"`` (e.g. ``"2:4"``) or ``"block:HxW"``.
        calib: calibration inputs for wanda: a tensor, one batch in the ``example_inputs`` form, or an
            iterable of batches.
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
    """
    method = renamed("sparsify", "method", "criterion", method, criterion, "magnitude")
    scope = local_scope(scope, "sparsify")
    sparsity, pat = _check_args(sparsity, method, scope, pattern, calib)
    targets = default_targets(model, ignore)
    if not targets:
        raise PruningError("model", "sparsify", "no Linear or Conv2d layer to sparsify (all ignored?)")
    _check_shapes(targets, pat)
    norms = input_norms(model, targets, calib) if method == "wanda" else {}
    with torch.no_grad():
        masks = _masks(_scores(method, targets, norms, seed), sparsity, method, scope, pat)
    result = SparsityResult(method, str(pat), scope, sparsity)
    for (name, mod), mask in zip(targets, masks, strict=True):
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
