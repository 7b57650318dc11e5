"""Bipartite soft matching and size-weighted merging of tokens: the pure core of token merging.

After ToMe: Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman, "Token Merging: Your ViT but Faster",
ICLR 2023. The non-protected tokens are split into two alternating sets A (even) and B (odd); each
A token is linked to its most similar B token (cosine similarity of a metric, usually the attention
keys averaged over heads); the ``r`` strongest links are merged. Everything here is a pure function of
tensors; :func:`bipartite_soft_matching` returns a :class:`Matching` holding ``merge`` and ``unmerge``
closures for one layer.

Departures from the reference implementation (facebookresearch/ToMe), all measured in tests/tokens:

- the first ``num_protected`` tokens (class, distillation, register tokens) are kept out of both sets
  instead of being given ``-inf`` scores, so any number of prefix tokens is protected;
- an optional ``valid`` mask (padding is ``False``): padding is matched with padding first, real with
  real; a real token is never averaged with padding (padding has size 0, see :func:`merge_wavg`);
- unmerged A tokens keep their original order;
- sources are traced as a ``positions`` map (original token -> current token), an ``N`` long integer
  vector per sample rather than an ``N' x N`` matrix; :func:`source_matrix` gives the matrix.

>>> import torch
>>> x = torch.randn(2, 11, 8)                  # 1 class token + 10 patch tokens
>>> m = bipartite_soft_matching(x, r=3, num_protected=1)
>>> merged, size = merge_wavg(m, x)
>>> merged.shape, size.sum(1).flatten().tolist()
(torch.Size([2, 8, 8]), [11.0, 11.0])
>>> m.unmerge(merged).shape
torch.Size([2, 11, 8])
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Matching", "bipartite_soft_matching", "compose", "merge_wavg", "merge_positions", "unmerge",
           "source_matrix", "attention_bias", "identity_matching"]

_PAD_PAIR_SCORE = 2.0      # above any cosine similarity: padding merges with padding first
_PAD_INTO_REAL_SCORE = -2.0  # below any cosine: only when r leaves no other choice (size-0, no effect)
_REAL_INTO_PAD_SCORE = -3.0
_CROSS_REGION_SCORE = -4.0   # below everything: tokens of two regions merge only when r leaves no other pair


@dataclass(frozen=True)
class Matching:
    """One layer's matching: ``merge(x, mode)`` shrinks ``(B, N, C)`` to ``(B, N - r, C)``,
    ``unmerge(y)`` copies each merged token back to every position it came from."""

    merge: Callable[..., torch.Tensor]
    unmerge: Callable[[torch.Tensor], torch.Tensor]
    r: int


def _identity(x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
    return x


def identity_matching() -> Matching:
    """The matching that merges nothing (``r = 0``)."""
    return Matching(_identity, lambda x: x, 0)


def bipartite_soft_matching(metric: torch.Tensor, r: int, *, num_protected: int = 0,
                            valid: torch.Tensor | None = None, regions: torch.Tensor | None = None) -> Matching:
    """Match the ``r`` most similar (A, B) pairs of the alternating sets of ``metric`` ``(B, N, C)``.

    ``num_protected`` leading tokens are never merged. ``valid`` ``(B, N)`` bool marks real tokens;
    padding is paired with padding first and never averaged into a real token. ``regions`` ``(B, N)``:
    an id per token; pairs from different regions rank below every same-region pair (a shifted Swin
    window holds up to four image regions that must not mix). ``r`` is clipped to half the
    unprotected tokens.

    >>> import torch
    >>> keys = torch.tensor([[[1., 0.], [1., 0.], [0., 1.], [0., 1.]]])
    >>> m = bipartite_soft_matching(keys, r=2)
    >>> m.merge(torch.arange(4.).view(1, 4, 1), "sum").flatten().tolist()   # 0+1, 2+3
    [1.0, 5.0]
    """
    B, N, _ = metric.shape
    p = num_protected
    r = min(int(r), (N - p) // 2)
    if r <= 0:
        return identity_matching()
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        body = metric[:, p:]
        a, b = body[:, ::2], body[:, 1::2]
        scores = a @ b.transpose(-1, -2)
        if valid is not None:
            vbody = valid[:, p:]
            va, vb = vbody[:, ::2, None], vbody[:, None, 1::2]
            scores = torch.where(va & vb, scores, scores.new_tensor(_REAL_INTO_PAD_SCORE))
            scores = torch.where(~va & ~vb, scores.new_tensor(_PAD_PAIR_SCORE), scores)
            scores = torch.where(~va & vb, scores.new_tensor(_PAD_INTO_REAL_SCORE), scores)
        if regions is not None:
            rbody = regions[:, p:]
            same = rbody[:, ::2, None] == rbody[:, None, 1::2]
            scores = torch.where(same, scores, scores.new_tensor(_CROSS_REGION_SCORE))
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[:, r:].sort(dim=1).values  # unmerged A tokens, original order
        src_idx = edge_idx[:, :r]                      # merged A tokens
        dst_idx = node_idx[..., None].gather(dim=1, index=src_idx)
    n_a = a.shape[1]
    n_unm = n_a - r

    def merge(x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        prefix, rest = x[:, :p], x[:, p:]
        src, dst = rest[:, ::2], rest[:, 1::2]
        n, _, c = src.shape
        unm = src.gather(1, unm_idx.expand(n, n_unm, c))
        moved = src.gather(1, src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(1, dst_idx.expand(n, r, c), moved, reduce=mode)
        return torch.cat([prefix, unm, dst], dim=1)

    def unmerge_layer(y: torch.Tensor) -> torch.Tensor:
        prefix, unm, dst = y[:, :p], y[:, p:p + n_unm], y[:, p + n_unm:]
        n, _, c = unm.shape
        src = y.new_empty(n, n_a, c)
        src.scatter_(1, unm_idx.expand(n, n_unm, c), unm)
        src.scatter_(1, src_idx.expand(n, r, c), dst.gather(1, dst_idx.expand(n, r, c)))
        rest = y.new_empty(n, N - p, c)
        rest[:, ::2] = src
        rest[:, 1::2] = dst
        return torch.cat([prefix, rest], dim=1)

    return Matching(merge, unmerge_layer, r)


def compose(first: Matching, then: Matching) -> Matching:
    """The matching that merges by ``first``, then by ``then`` (un-merging in the reverse order).

    >>> import torch
    >>> m = compose(bipartite_soft_matching(torch.tensor([[[1., 0.], [1., 0.], [0., 1.], [1., 1.]]]), r=1),
    ...             identity_matching())
    >>> m.r, m.unmerge(m.merge(torch.arange(4.).view(1, 4, 1), "amax")).flatten().tolist()
    (1, [1.0, 1.0, 2.0, 3.0])
    """
    if then.r == 0:
        return first
    if first.r == 0:
        return then
    return Matching(lambda x, mode="sum": then.merge(first.merge(x, mode), mode),
                    lambda y: first.unmerge(then.unmerge(y)), first.r + then.r)


def merge_wavg(matching: Matching, x: torch.Tensor, size: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``x`` by a size-weighted average; returns ``(x, size)`` with ``size`` ``(B, N', 1)``.

    ``size`` counts the original tokens a token stands for (ones when ``None``). Padding has size 0,
    so it never changes a real token it is merged with.

    >>> import torch
    >>> m = bipartite_soft_matching(torch.tensor([[[1., 0.], [1., 0.]]]), r=1)
    >>> x, s = merge_wavg(m, torch.tensor([[[0.], [3.]]]), torch.tensor([[[2.], [1.]]]))
    >>> x.flatten().tolist(), s.flatten().tolist()
    ([1.0], [3.0])
    """
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    if matching.r == 0:
        return x, size
    x = matching.merge(x * size, "sum")
    size = matching.merge(size, "sum")
    return x / size.clamp_min(1e-6), size


def merge_positions(matching: Matching, positions: torch.Tensor | None, num_tokens: int,
                    batch: int, device: torch.device | None = None) -> torch.Tensor:
    """Compose a layer's matching into ``positions`` ``(B, N0)``: original token -> current index.

    ``num_tokens`` is the token count before this layer's merge; ``positions=None`` stands for the
    identity (nothing merged yet).

    >>> import torch
    >>> m = bipartite_soft_matching(torch.tensor([[[1., 0.], [1., 0.], [0., 1.], [0., 1.]]]), r=2)
    >>> merge_positions(m, None, 4, 1).tolist()
    [[0, 0, 1, 1]]
    """
    if matching.r == 0 and positions is not None:
        return positions
    layer_map = torch.arange(num_tokens - matching.r, device=device)
    layer_map = matching.unmerge(layer_map.view(1, -1, 1).expand(batch, -1, 1)).squeeze(-1)
    return layer_map if positions is None else layer_map.gather(1, positions)


def unmerge(tokens: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Copy each merged token ``(B, N', C)`` back to every original position: ``(B, N0, C)``.

    For dense heads (segmentation, per-token outputs). ``positions`` is the source map of a merged
    forward (``model._tome_info.positions``); ``None`` means nothing was merged.

    >>> import torch
    >>> unmerge(torch.tensor([[[1.], [2.]]]), torch.tensor([[0, 1, 1, 0]])).flatten().tolist()
    [1.0, 2.0, 2.0, 1.0]
    """
    if positions is None:
        return tokens
    return tokens.gather(1, positions[..., None].expand(-1, -1, tokens.shape[-1]))


def source_matrix(positions: torch.Tensor, num_merged: int | None = None) -> torch.Tensor:
    """The reference ToMe ``source`` matrix ``(B, N', N0)``: entry ``[b, i, j]`` is 1 when original
    token ``j`` was merged into token ``i``.

    >>> import torch
    >>> source_matrix(torch.tensor([[0, 1, 1]])).tolist()
    [[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]]
    """
    n = int(positions.max()) + 1 if num_merged is None else num_merged
    return torch.nn.functional.one_hot(positions, n).transpose(1, 2).float()


def attention_bias(size: torch.Tensor | None, prop_attn: bool, dtype: torch.dtype,
                   has_padding: bool = False) -> torch.Tensor | None:
    """The additive attention mask ``(B, 1, 1, N)`` for token sizes ``(B, N, 1)``.

    Proportional attention adds ``log(size)`` to every key's logit (a token standing for k patches
    counts as k keys); size 0 (padding, when ``has_padding``) is masked out either way. ``None`` when
    nothing is needed.

    >>> import torch
    >>> attention_bias(torch.tensor([[[1.], [2.]]]), True, torch.float32).flatten().tolist()
    [0.0, 0.6931471824645996]
    """
    if size is None:
        return None
    s = size.transpose(1, 2)[:, None].to(dtype)
    neg = torch.finfo(dtype).min
    if prop_attn:
        return torch.where(s > 0, s.clamp_min(1e-30).log(), s.new_tensor(neg))
    if not has_padding:
        return None
    return torch.where(s > 0, s.new_tensor(0.0), s.new_tensor(neg))
