"""Pure scoring and mask functions for unstructured, N:M and block sparsity (no nn.Module state).

A *score* tensor has the shape of the weight; a *mask* is a bool tensor of the same shape, ``True``
where the weight is kept. Weights are viewed as 2-D ``(out, in)`` matrices: a Conv2d weight
``(out, in, kh, kw)`` is compared as ``(out, in*kh*kw)``, the weight matrix of the im2col GEMM;
N:M groups of M run along its rows (the GEMM reduction dimension, as 2:4 sparse tensor cores need).

Methods:

- magnitude: ``|W|`` (Han et al. 2015, "Learning both Weights and Connections").
- wanda: ``|W| * ||X||_2`` per input feature, compared within each output row
  (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models").
- random: uniform random scores (a baseline).

Patterns:

- unstructured: the lowest-scoring weights go, compared over one layer or over all layers (global).
- N:M: in every group of M consecutive input weights at most N are kept (Mishra et al. 2021,
  "Accelerating Sparse Deep Neural Networks"; Zhou et al. 2021, "Learning N:M Fine-grained
  Structured Sparse Neural Networks From Scratch").
- block:HxW: whole HxW tiles of the ``(out, in)`` matrix go, scored by the sum of their scores.

Ties are broken exactly as ``torch.topk(largest=False)`` breaks them on the concatenated scores, so
global magnitude pruning picks the same mask as ``torch.nn.utils.prune.global_unstructured``.

>>> import torch
>>> w = torch.tensor([[1.0, -4.0, 2.0, 3.0], [0.5, 0.1, -0.2, 9.0]])
>>> nm_mask(w.abs(), 2, 4).int().tolist()
[[0, 1, 0, 1], [1, 0, 0, 1]]
>>> unstructured_masks([w.abs()], 0.5)[0].sum().item()
4
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

__all__ = ["Pattern", "parse_pattern", "as_matrix", "magnitude_scores", "wanda_scores", "random_scores",
           "unstructured_masks", "row_masks", "spread_row_masks", "nm_mask", "block_masks", "num_to_prune"]


@dataclass(frozen=True)
class Pattern:
    """A parsed sparsity pattern: ``kind`` is ``"unstructured"``, ``"nm"`` or ``"block"``."""

    kind: str
    n: int = 0
    m: int = 0

    @property
    def sparsity(self) -> float | None:
        """The sparsity the pattern fixes by itself (N:M), else ``None``."""
        return 1.0 - self.n / self.m if self.kind == "nm" else None

    def __str__(self) -> str:
        return {"unstructured": "unstructured", "nm": f"{self.n}:{self.m}", "block": f"block:{self.n}x{self.m}"}[
            self.kind]


def parse_pattern(pattern: str) -> Pattern:
    """Parse ``"unstructured"``, ``"N:M"`` or ``"block:HxW"``; raise ``ValueError`` otherwise.

    >>> parse_pattern("2:4"), parse_pattern("block:4x8").m
    (Pattern(kind='nm', n=2, m=4), 8)
    """
    if pattern == "unstructured":
        return Pattern("unstructured")
    if m := re.fullmatch(r"(\d+):(\d+)", pattern or ""):
        n, mm = int(m[1]), int(m[2])
        if not 0 < n < mm:
            raise ValueError(f"N:M pattern {pattern!r} needs 0 < N < M")
        return Pattern("nm", n, mm)
    if m := re.fullmatch(r"block:(\d+)x(\d+)", pattern or ""):
        h, w = int(m[1]), int(m[2])
        if h < 1 or w < 1:
            raise ValueError(f"block pattern {pattern!r} needs positive sizes")
        return Pattern("block", h, w)
    raise ValueError(f"unknown pattern {pattern!r}: use 'unstructured', 'N:M' (e.g. '2:4') or 'block:HxW'")


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """View a weight as ``(out, in)``: Linear as is, Conv ``(out, in, kh, kw)`` -> ``(out, in*kh*kw)``."""
    return t.reshape(t.shape[0], -1)


def num_to_prune(sparsity: float, n: int) -> int:
    """How many of ``n`` entries a ``sparsity`` removes (``round``, as torch.nn.utils.prune does)."""
    return int(round(sparsity * n))


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """``|W|``."""
    return weight.detach().abs()


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """``|W| * ||X_j||_2``: ``input_norm`` holds one L2 norm per input channel (``weight.shape[1]``).

    >>> wanda_scores(torch.tensor([[1.0, -1.0]]), torch.tensor([3.0, 0.5])).tolist()
    [[3.0, 0.5]]
    """
    w = weight.detach().abs()
    shape = (1, -1) + (1,) * (w.dim() - 2)
    return w * input_norm.to(w.dtype).reshape(shape)


def random_scores(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random scores (a baseline that ignores the weights)."""
    return torch.rand(weight.shape, generator=generator, dtype=torch.float32).to(weight.device)


def unstructured_masks(scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Remove the ``round(sparsity * total)`` lowest scores over all tensors together.

    One tensor in ``scores`` = layer-wise pruning; several = global pruning. The candidates are the
    flattened tensors concatenated in order, and ``torch.topk(largest=False)`` picks them, like
    ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``.
    """
    flat = torch.cat([s.reshape(-1) for s in scores]) if len(scores) > 1 else scores[0].reshape(-1)
    k = num_to_prune(sparsity, flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if k:
        keep[torch.topk(flat, k, largest=False).indices] = False
    return [m.view(s.shape) for m, s in zip(keep.split([s.numel() for s in scores]), scores, strict=True)]


def row_masks(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the same number of lowest scores from every output row (Wanda's comparison group)."""
    mat = as_matrix(score)
    k = num_to_prune(sparsity, mat.shape[1])
    keep = torch.ones(mat.shape, dtype=torch.bool, device=mat.device)
    if k:
        keep.scatter_(1, torch.topk(mat, k, dim=1, largest=False).indices, False)
    return keep.view(score.shape)


def spread_row_masks(score: torch.Tensor, k: int) -> torch.Tensor:
    """Remove ``k`` lowest scores in all, compared within each output row (Wanda's group) and spread as
    evenly as rows allow: each row loses ``k // rows``, and the ``k % rows`` rows whose next-lowest
    score is smallest lose one more. ``row_masks`` is the case ``k = rows * round(sparsity * in)``.

    >>> spread_row_masks(torch.tensor([[1.0, 2.0, 3.0], [0.5, 9.0, 8.0]]), 3).int().tolist()
    [[0, 0, 1], [0, 1, 1]]
    """
    mat = as_matrix(score)
    rows, cols = mat.shape
    base, extra = divmod(int(k), rows)
    keep = torch.ones(mat.shape, dtype=torch.bool, device=mat.device)
    depth = min(base + 1, cols)
    if base == 0 and extra == 0:
        return keep.view(score.shape)
    values, idx = torch.topk(mat, depth, dim=1, largest=False)
    keep.scatter_(1, idx[:, :base], False)
    if extra:
        chosen = torch.topk(values[:, base], extra, largest=False).indices
        keep[chosen, idx[chosen, base]] = False
    return keep.view(score.shape)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive weights of each row of the
    ``(out, in)`` matrix, i.e. along the GEMM reduction dimension (``in*kh*kw`` for a Conv2d).

    That dimension must be divisible by ``m``.
    """
    mat = as_matrix(score)
    if mat.shape[1] % m:
        raise ValueError(f"input dimension {mat.shape[1]} is not divisible by M={m}")
    groups = mat.reshape(-1, m)
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
    keep.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    return keep.view(score.shape)


def _block_view(mat: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(out, in)`` -> ``(out/h, in/w, h, w)``."""
    o, i = mat.shape
    return mat.reshape(o // h, h, i // w, w).permute(0, 2, 1, 3)


def block_masks(scores: list[torch.Tensor], sparsity: float, h: int, w: int) -> list[torch.Tensor]:
    """Remove whole ``h x w`` tiles of each ``(out, in)`` matrix, lowest summed score first.

    Tiles of all tensors in ``scores`` compete together (pass one tensor for layer-wise pruning).
    """
    sums = []
    for s in scores:
        mat = as_matrix(s)
        if mat.shape[0] % h or mat.shape[1] % w:
            raise ValueError(f"weight matrix {tuple(mat.shape)} does not tile into {h}x{w} blocks")
        sums.append(_block_view(mat, h, w).sum((-1, -2)))
    keeps = unstructured_masks(sums, sparsity)
    out = []
    for s, k in zip(scores, keeps, strict=True):
        mat = as_matrix(s)
        full = k[:, :, None, None].expand(-1, -1, h, w).permute(0, 2, 1, 3).reshape(mat.shape)
        out.append(full.reshape(s.shape).contiguous())
    return out
