"""SparseGPT's pruning step for one weight matrix: OBS updates with the inverse Hessian, in column blocks.

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
(ICML 2023). For a layer ``Y = W X`` with calibration inputs ``X``, the Hessian of the layer-wise
reconstruction error ``||W X - W' X||²`` is ``H = 2 X Xᵀ`` (dampened by ``dampening`` times its mean
diagonal, the reference's ``percdamp``). Columns are visited left to right; pruning a weight shifts
its error onto the columns not yet visited through the upper Cholesky factor of ``H⁻¹``, so the kept
weights change to compensate. Masks are chosen per block of ``blocksize`` columns by the OBS saliency
``w² / [H⁻¹]_jj²`` (the paper's adaptive mask selection), per group of M columns for N:M, and per
tile of the ``(out, in)`` matrix for block patterns.

Everything here is a pure function of tensors; :mod:`prunekit.sparse.sequential` collects the
Hessians through the model and writes the results back.

>>> import torch
>>> torch.manual_seed(0) and None
>>> x = torch.randn(256, 16)
>>> w = torch.randn(8, 16)
>>> new, keep = prune_matrix(w, x.T @ x, 64, Pattern("unstructured"))
>>> int((~keep).sum()), bool((new[~keep] == 0).all())
(64, True)
>>> obs = (w @ x.T - new @ x.T).norm()
>>> mag = (w @ x.T - (w * (w.abs() > w.abs().flatten().kthvalue(64).values)) @ x.T).norm()
>>> bool(obs < mag)
True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prunekit.sparse.masks import Pattern

__all__ = ["SparseGPT", "inverse_hessian_factor", "column_loop", "prune_matrix", "tile_shape", "cumulative_share"]


@dataclass(frozen=True)
class SparseGPT:
    """SparseGPT's settings, passed as ``sparsify(..., criterion=SparseGPT(dampening=0.05))``.

    ``criterion="sparsegpt"`` is ``SparseGPT()``: the reference's defaults.

    Attributes:
        dampening: added to the Hessian's diagonal, as a fraction of its mean diagonal (``percdamp``).
        blocksize: columns whose masks are chosen together and whose updates are applied lazily.
    """

    dampening: float = 0.01
    blocksize: int = 128
    name: ClassVar[str] = "sparsegpt"

    def __post_init__(self) -> None:
        if not (isinstance(self.dampening, (int, float)) and self.dampening >= 0):
            raise ValueError(f"SparseGPT dampening must be a number >= 0, got {self.dampening!r}")
        if not (isinstance(self.blocksize, int) and self.blocksize >= 1):
            raise ValueError(f"SparseGPT blocksize must be a positive int, got {self.blocksize!r}")


def tile_shape(pattern: Pattern) -> tuple[int, int]:
    """The unit a mask keeps or removes as a whole: one weight, or one ``h x w`` block."""
    return (pattern.n, pattern.m) if pattern.kind == "block" else (1, 1)


def inverse_hessian_factor(h: torch.Tensor, dampening: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹``, ``λ = dampening * mean(diag H)``, as SparseGPT uses it.

    Inputs that never fire (zero diagonal) get a unit diagonal, so they do not make ``H`` singular.
    Raises ``ValueError`` when ``H`` is still not positive definite (raise ``dampening``).

    >>> inverse_hessian_factor(torch.tensor([[4.0, 0.0], [0.0, 0.0]]), 0.0).diagonal().tolist()
    [0.5, 1.0]
    """
    h = h.clone()
    diag = h.diagonal()
    diag[diag == 0] = 1.0
    diag.add_(dampening * diag.mean())
    for attempt in (h, h.double()):  # float32 first; float64 when float32 rounding breaks positivity
        chol, info = torch.linalg.cholesky_ex(attempt)
        if not int(info):
            eye = torch.eye(chol.shape[0], dtype=chol.dtype, device=chol.device)
            inv = torch.cholesky_solve(eye, chol)  # LAPACK's potri (cholesky_inverse) stalls with busy threads
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if not int(info):
                return upper.to(h.dtype)
    raise ValueError(f"the Hessian is not positive definite at dampening={dampening:g}; raise dampening")


def cumulative_share(total: int, upto: int, n: int) -> int:
    """``round(total * upto / n)`` in integers: how much of ``total`` the first ``upto`` of ``n`` equal
    parts take, so the parts' shares add up to ``total`` exactly.

    >>> [cumulative_share(5, i + 1, 3) - cumulative_share(5, i, 3) for i in range(3)]
    [2, 1, 2]
    """
    return (2 * total * upto + n) // (2 * n)


def _block_mask(saliency: torch.Tensor, k: int, th: int, tw: int) -> torch.Tensor:
    """``True`` where a weight goes: the ``k`` tiles of lowest summed saliency in this column block."""
    rows, cols = saliency.shape
    tiles = saliency.reshape(rows // th, th, cols // tw, tw).sum((1, 3))
    drop = torch.zeros(tiles.numel(), dtype=torch.bool, device=saliency.device)
    if k:
        drop[torch.topk(tiles.flatten(), k, largest=False).indices] = True
    return drop.view(tiles.shape).repeat_interleave(th, 0).repeat_interleave(tw, 1)


def column_loop(w: torch.Tensor, u: torch.Tensor, drop: torch.Tensor, nm: tuple[int, int] | None = None,
                sub: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's column loop over one block of columns: ``(new block, errors)``.

    Column ``i`` is visited after the columns left of it have moved it: its dropped weights become
    zero, their errors ``e = w_i / U_ii`` (``u`` is this block of the upper Cholesky factor of
    ``H⁻¹``), and the columns right of it move by ``-e U_i,:``. Updates are applied eagerly inside
    sub-blocks of ``sub`` columns, whose operations are small, and by one matrix product between
    sub-blocks (the paper's lazy batching, one level down). With ``nm = (N, M)`` the mask is chosen
    here, per group of M columns, from the weights as updated so far, and written into ``drop``.

    >>> u = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    >>> new, err = column_loop(torch.tensor([[4.0, 3.0]]), u, torch.tensor([[True, False]]))
    >>> new.tolist(), err.tolist()
    ([[0.0, 1.0]], [[2.0, 0.0]])
    """
    w = w.clone()
    out, err = torch.empty_like(w), torch.zeros_like(w)
    d = u.diagonal()
    cols = w.shape[1]
    step = nm[1] if nm else 1
    sub = max(step, sub // step * step)
    for s0 in range(0, cols, sub):
        s1 = min(s0 + sub, cols)
        ws, us, ds = w[:, s0:s1].clone(), u[s0:s1, s0:s1], drop[:, s0:s1]
        for i in range(s1 - s0):
            if nm and i % nm[1] == 0:
                sal = ws[:, i:i + nm[1]].pow(2) / d[s0 + i:s0 + i + nm[1]].pow(2)
                ds[:, i:i + nm[1]].scatter_(1, torch.topk(sal, nm[1] - nm[0], dim=1, largest=False).indices, True)
            e = ws[:, i].masked_fill(~ds[:, i], 0.0) / d[s0 + i]
            ws[:, i:] -= e[:, None] * us[i, i:]
            err[:, s0 + i] = e
            out[:, s0 + i] = ws[:, i].masked_fill(ds[:, i], 0.0)
        w[:, s1:] -= err[:, s0:s1] @ u[s0:s1, s1:]
    return out, err


def prune_matrix(weight: torch.Tensor, hessian: torch.Tensor, pruned: int, pattern: Pattern,
                 blocksize: int = 128, dampening: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one ``(out, in)`` matrix: ``(new weight, keep mask)``, both of ``weight``'s shape.

    ``hessian`` is ``X Xᵀ`` (any positive scale) over the ``in`` inputs. ``pruned`` counts the tiles
    to remove (weights when unstructured, ``h x w`` blocks for ``block:hxw``; ignored for N:M, where
    every group of M columns keeps N per row, chosen on the weights as updated so far). Each column
    block removes its share of ``pruned``, rounded so the total is exact. The weights the mask removes
    are exactly zero; the kept weights absorb their error. Computed in float32, returned in
    ``weight``'s dtype.
    """
    rows, cols = weight.shape
    th, tw = tile_shape(pattern)
    step = pattern.m if pattern.kind in ("nm", "block") else 1
    bs = max(step, blocksize // step * step)
    nm = (pattern.n, pattern.m) if pattern.kind == "nm" else None
    w = weight.detach().float().clone()
    hinv = inverse_hessian_factor(hessian.float(), dampening)
    drop = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    done = 0
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        u = hinv[i1:i2, i1:i2]
        if nm is None:  # adaptive mask selection: this block's share, by w² / [H⁻¹]_jj²
            k = cumulative_share(pruned, i2, cols) - done
            drop[:, i1:i2] = _block_mask(w[:, i1:i2].pow(2) / u.diagonal().pow(2), k, th, tw)
            done += k
        w[:, i1:i2], err = column_loop(w[:, i1:i2], u, drop[:, i1:i2], nm)
        w[:, i2:] -= err @ hinv[i1:i2, i2:]
    return w.to(weight.dtype), ~drop
