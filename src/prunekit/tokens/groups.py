"""Local merging: whole groups of neighbouring tokens (space windows, time tubes) collapsed into one.

The pure core of the local stage of dense-prediction merging (ALGM: Norouzi, Orlova, de Geus,
Dubbelman, "ALGM: Adaptive Local-then-Global Token Merging for Efficient Semantic Segmentation with
Plain Vision Transformers", CVPR 2024: 2x2 windows of similar tokens are averaged after the first
layer) and of early background merging in video (a static background repeats the same tubelet in
every time slice of a location). Tokens lie on a ``(T, H, W)`` grid after ``num_protected`` prefix
tokens; a window ``(t, h, w)`` tiles it into groups; the ``count`` groups whose tokens are most alike
(mean pairwise cosine similarity of the metric) are each merged into one token. Groups, like ToMe's
``r``, are chosen per image but the same number for every image of a batch, so shapes stay batched.

>>> import torch
>>> groups = window_groups((1, 4, 4), (1, 2, 2))       # 16 tokens in 4 windows
>>> groups.tolist()[:8]
[0, 0, 1, 1, 0, 0, 1, 1]
>>> m = group_matching(torch.randn(2, 17, 8), groups, count=3, num_protected=1)
>>> m.r, m.merge(torch.ones(2, 17, 1), "sum").shape   # 3 windows of 4 -> 3 tokens: 9 fewer
(9, torch.Size([2, 8, 1]))
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from prunekit.tokens.matching import Matching, identity_matching

__all__ = ["LocalMerge", "window_groups", "window_layout", "GroupLayout", "group_layout", "group_scores",
           "matching_from_assignment", "group_matching"]


_BARRED_GROUP_SCORE = -4.0  # below any mean cosine: a barred group merges only when count leaves no other


@dataclass(frozen=True)
class LocalMerge:
    """The local stage of a merge: in layer ``layer`` (0 = the first), merge ``count`` groups per image
    of the token grid tiled by ``window`` ``(t, h, w)``; layers before it merge nothing, layers after
    it merge globally as the ``r`` schedule says. ``threshold``: see :func:`group_matching`.

    >>> LocalMerge(30)                      # 30 of the 2x2 windows, after the first layer's attention
    LocalMerge(count=30, window=(1, 2, 2), layer=0, threshold=None)
    """

    count: int
    window: tuple[int, int, int] = (1, 2, 2)
    layer: int = 0
    threshold: float | None = None

    def __post_init__(self):
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(f"LocalMerge.count must be an int >= 0, got {self.count!r}")
        if self.layer < 0:
            raise ValueError(f"LocalMerge.layer must be >= 0, got {self.layer}")
        window = tuple(int(v) for v in self.window)
        if len(window) != 3 or min(window) < 1 or window[0] * window[1] * window[2] < 2:
            raise ValueError(f"LocalMerge.window must be 3 positive sizes (t, h, w) holding 2+ tokens, "
                             f"got {self.window!r}")
        object.__setattr__(self, "window", window)


def window_groups(grid: tuple[int, int, int], window: tuple[int, int, int]) -> torch.Tensor:
    """Group id ``(T*H*W,)`` of every token of a ``(T, H, W)`` grid (raster order, time slowest)
    tiled by ``window`` ``(t, h, w)``; tokens in a partial window at an edge get -1 (never merged).

    >>> window_groups((2, 1, 3), (2, 1, 1)).tolist()   # time tubes: a location across both slices
    [0, 1, 2, 0, 1, 2]
    >>> window_groups((1, 3, 3), (1, 2, 2)).tolist()
    [0, 0, -1, 0, 0, -1, -1, -1, -1]
    """
    return torch.tensor(_window_lists(tuple(grid), tuple(window))[0])


def window_layout(grid: tuple[int, int, int], window: tuple[int, int, int]) -> GroupLayout:
    """:class:`GroupLayout` of :func:`window_groups`, worked out in plain Python: under ``torch.export``
    it is made of constants (no data-dependent ``nonzero`` as in :func:`group_layout`).

    >>> window_layout((1, 3, 3), (1, 2, 2)).inside.tolist(), window_layout((1, 3, 3), (1, 2, 2)).count
    ([0, 1, 3, 4], 1)
    """
    groups, inside = _window_lists(tuple(grid), tuple(window))
    (T, H, W), (wt, wh, ww) = grid, window
    return GroupLayout(torch.tensor(groups), torch.tensor(inside, dtype=torch.long),
                       torch.tensor([groups[k] for k in inside], dtype=torch.long), wt * wh * ww,
                       (T // wt) * (H // wh) * (W // ww))


@functools.lru_cache(maxsize=64)
def _window_lists(grid: tuple[int, int, int], window: tuple[int, int, int]
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(group of each token, the grouped tokens)`` as plain ints (cached: no tensor is kept, so none
    made under an export's fake mode outlives it)."""
    (T, H, W), (wt, wh, ww) = grid, window
    if min(grid) < 1 or min(window) < 1:
        raise ValueError(f"grid {grid} and window {window} must be positive")
    if wt * wh * ww < 2:
        raise ValueError(f"window {window} holds one token: nothing to merge")
    if wt > T or wh > H or ww > W:
        raise ValueError(f"window {window} is larger than the token grid {grid}")
    nt, nh, nw = T // wt, H // wh, W // ww
    groups = tuple(((t // wt) * nh + h // wh) * nw + w // ww if t < nt * wt and h < nh * wh and w < nw * ww else -1
                   for t in range(T) for h in range(H) for w in range(W))
    return groups, tuple(k for k, g in enumerate(groups) if g >= 0)


@dataclass
class GroupLayout:
    """A token grouping with its sizes worked out once (plain ints and constant index tensors), so that
    merging by it has static shapes (``torch.export`` / ONNX) and repeats no work per forward."""

    groups: torch.Tensor       # (N,) group of each token, -1 for none
    inside: torch.Tensor       # indices of the grouped tokens
    members: torch.Tensor      # their groups, groups[inside]
    size: int                  # tokens per group
    count: int                 # number of groups


def group_layout(groups: torch.Tensor | GroupLayout) -> GroupLayout:
    """:class:`GroupLayout` of a ``groups`` tensor (as from :func:`window_groups`); checks equal sizes >= 2."""
    if isinstance(groups, GroupLayout):
        return groups
    inside = torch.nonzero(groups >= 0).flatten()
    members = groups[inside]
    if members.numel() == 0:
        return GroupLayout(groups, inside, members, 0, 0)
    sizes = torch.bincount(members)
    if not bool((sizes == sizes[0]).all()) or int(sizes[0]) < 2:
        raise ValueError(f"groups must have equal sizes >= 2, got sizes {sizes.tolist()}")
    return GroupLayout(groups, inside, members, int(sizes[0]), sizes.numel())


def group_scores(metric: torch.Tensor, groups: torch.Tensor | GroupLayout) -> torch.Tensor:
    """Mean pairwise cosine similarity ``(B, G)`` of the tokens of each group.

    ``metric`` ``(B, N, C)`` holds the grouped tokens only; ``groups`` ``(N,)`` as from
    :func:`window_groups` (equal-sized groups, -1 for none), or its :class:`GroupLayout`.

    >>> x = torch.tensor([[[1., 0.], [1., 0.], [1., 0.], [0., 1.]]])
    >>> group_scores(x, torch.tensor([0, 0, 1, 1])).tolist()
    [[1.0, 0.0]]
    """
    lay = group_layout(groups)
    m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = lay.size
    sums = m.new_zeros(m.shape[0], lay.count, m.shape[-1])
    sums.index_add_(1, lay.members.to(m.device), m.index_select(1, lay.inside.to(m.device)))
    # sum over pairs i != j of m_i . m_j = |sum m|^2 - k for unit vectors
    return (sums.pow(2).sum(-1) - k) / (k * (k - 1))


def matching_from_assignment(assign: torch.Tensor, num_out: int) -> Matching:
    """A :class:`~prunekit.tokens.matching.Matching` sending token ``j`` of sample ``b`` to output slot
    ``assign[b, j]`` (every slot in ``range(num_out)`` receives at least one token).

    >>> m = matching_from_assignment(torch.tensor([[0, 1, 1, 2]]), 3)
    >>> m.merge(torch.arange(4.).view(1, 4, 1), "sum").flatten().tolist(), m.r
    ([0.0, 3.0, 3.0], 1)
    >>> m.unmerge(torch.tensor([[[5.], [6.], [7.]]])).flatten().tolist()
    [5.0, 6.0, 6.0, 7.0]
    """
    B, N = assign.shape

    def merge(x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        idx = assign[..., None].expand(-1, -1, x.shape[-1])
        return x.new_zeros(B, num_out, x.shape[-1]).scatter_reduce(1, idx, x, reduce=mode, include_self=False)

    def unmerge(y: torch.Tensor) -> torch.Tensor:
        return y.gather(1, assign[..., None].expand(-1, -1, y.shape[-1]))

    return Matching(merge, unmerge, N - num_out)


def group_matching(metric: torch.Tensor, groups: torch.Tensor, count: int, *, num_protected: int = 0,
                   threshold: float | None = None, allowed: torch.Tensor | None = None) -> Matching:
    """Merge, per image, the ``count`` groups of ``metric`` ``(B, N, C)`` whose tokens are most alike.

    ``groups`` ``(N - num_protected,)`` gives each unprotected token's group (:func:`window_groups`),
    or its :class:`GroupLayout` (what a patched model keeps: static shapes, exportable).
    ``threshold``: merge only groups scoring at least this (ALGM's adaptive rule); the count is then
    the smallest number of such groups among the images of the batch, at most ``count``. The output
    is the prefix, the tokens left alone (in order), then one token per merged group.
    ``allowed`` ``(B, G)`` bool: groups that may merge (a group holding padding or two shift regions
    may not); the others rank below every allowed group and merge only when ``count`` leaves no other.
    """
    B, N, _ = metric.shape
    p = num_protected
    lay = group_layout(groups)
    groups = lay.groups.to(metric.device)
    if groups.shape != (N - p,):
        raise ValueError(f"{N - p} unprotected tokens but a grouping of {tuple(groups.shape)}")
    if lay.count == 0:
        return identity_matching()
    k, n_groups = lay.size, lay.count
    with torch.no_grad():
        scores = group_scores(metric[:, p:], lay)
        if allowed is not None:
            scores = torch.where(allowed, scores, scores.new_tensor(_BARRED_GROUP_SCORE))
        count = min(int(count), n_groups)
        if threshold is not None:
            count = min(count, int((scores >= threshold).sum(1).min()))
        if count <= 0:
            return identity_matching()
        chosen = torch.zeros(B, n_groups, dtype=torch.bool, device=metric.device)
        top = scores.topk(count, dim=1).indices
        chosen.scatter_(1, top, True)
        in_chosen = chosen[:, groups.clamp_min(0)] & (groups >= 0)  # (B, N - p); no bool where (ONNX)
        n_alone = N - p - count * k
        alone_rank = (~in_chosen).long().cumsum(1) - 1
        group_slot = chosen.long().cumsum(1) - 1  # (B, G): rank of each chosen group
        merged_slot = n_alone + group_slot.gather(1, groups.clamp_min(0).expand(B, -1))
        body = torch.where(in_chosen, merged_slot, alone_rank) + p
        prefix = torch.arange(p, device=metric.device).expand(B, p)
        assign = torch.cat([prefix, body], dim=1)
        # merging gathers instead of scattering the whole sequence (4x faster on CPU): the tokens left
        # alone in order, then each chosen group's k members, groups in id order (= their slots)
        pos = torch.arange(N - p, device=metric.device)   # sort keys below are unique: no stable sort needed
        alone = (in_chosen.long() * (N - p) + pos).topk(n_alone, dim=1, largest=False).indices
        inside, members = lay.inside.to(metric.device), lay.members.to(metric.device)
        table = inside[(members * (N - p) + inside).argsort()].view(n_groups, k)
        members = table[top.sort(dim=1).values].view(B, count * k)     # the chosen groups in id order
    return _gathering(assign, p, alone, members, count, k)


def _gathering(assign: torch.Tensor, p: int, alone: torch.Tensor, members: torch.Tensor, count: int,
               k: int) -> Matching:
    """The matching of :func:`group_matching`, merging and un-merging by row selects of the flattened
    batch (``sum`` and ``amax``; other modes scatter)."""
    B, N = assign.shape
    fallback = matching_from_assignment(assign, p + alone.shape[1] + count)
    rows = torch.arange(B, device=assign.device)[:, None]
    pick = torch.cat([alone, members], dim=1) + rows * (N - p)      # rows of the flattened body
    back = (assign + rows * (p + alone.shape[1] + count)).flatten()    # rows of the flattened output

    def merge(x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        if mode not in ("sum", "amax"):
            return fallback.merge(x, mode)
        c = x.shape[-1]
        taken = x[:, p:].reshape(B * (N - p), c).index_select(0, pick.flatten()).view(B, -1, c)
        left, grouped = taken[:, :alone.shape[1]], taken[:, alone.shape[1]:].view(B, count, k, c)
        grouped = grouped.sum(2) if mode == "sum" else grouped.amax(2)
        return torch.cat([x[:, :p], left, grouped], dim=1)

    def unmerge(y: torch.Tensor) -> torch.Tensor:
        return y.reshape(-1, y.shape[-1]).index_select(0, back).view(B, N, y.shape[-1])

    return Matching(merge, unmerge, fallback.r)

