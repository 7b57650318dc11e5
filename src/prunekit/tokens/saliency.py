"""Saliency-aware token merging: score tokens by attention sharpness, merge the background first.

After vid-TLDR (Choi, Lee, Choi, Kim, Kim, Kim, Park, "vid-TLDR: Training Free Token merging for
Light-weight Video Transformer", CVPR 2024): in an early block the attention map ``A`` ``(B, heads,
N, N)`` the block computes anyway says which tokens matter. A query whose attention is sharp (low
entropy) looks at something specific; the tokens that sharp queries attend to are salient, the rest
is background. Here each token's saliency is the attention it receives, weighted by the sharpness of
each query, averaged over heads and queries:

    saliency_j = mean_heads (1/N) sum_i A_ij * (log N - H(A_i)),   H(A_i) = -sum_k A_ik log A_ik.

``log N - H`` is the negative entropy shifted to be >= 0 (the KL divergence from uniform attention,
0 for a query that looks everywhere alike). Departure, measured: with the plain negative entropy
``-H`` every weight is negative, so the tokens nobody attends to score highest; on motion-vivit's
first block that ranks the moving garment's tokens *below* the static texture (ROC AUC 0.08 over 64
clips), the shifted weight ranks them above it (AUC 0.92).

In the first ``early`` blocks the background is merged aggressively, by bipartite soft matching
(:func:`prunekit.tokens.matching.bipartite_soft_matching`) over all background space-time tokens, while
the ``keep`` share of most salient tokens is kept out of the matching (placed after the prefix tokens
and protected like them); the later blocks run ordinary ToMe. Sizes and proportional attention are
tracked by the engine (:func:`prunekit.tokens.merge.run_layers`).

>>> import torch
>>> attn = torch.full((1, 1, 4, 4), 0.25)          # every query looks everywhere alike ...
>>> attn[0, 0, 1] = torch.tensor([0., 0., 1., 0.])  # ... but query 1 looks at token 2 only
>>> attention_saliency(attn).tolist()               # log(4) / 4 for token 2, nothing for the rest
[[0.0, 0.0, 0.3465735912322998, 0.0]]
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prunekit.tokens.matching import Matching, bipartite_soft_matching
from prunekit.tokens.schedule import Schedule

KEEP = 0.3               # share of the unprotected tokens kept out of the early merging
BACKGROUND_SHARE = 0.73  # share of the background tokens an early block merges unless told
QUERY_STRIDE = 8         # the saliency averages every 8th query

__all__ = ["SaliencyMerge", "KEEP", "BACKGROUND_SHARE", "QUERY_STRIDE", "attention_probs", "sharpness",
           "attention_saliency", "saliency_from_qk", "salient_order", "background_matching"]


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The attention probabilities ``(B, heads, N, N)`` of queries and keys ``(B, heads, N, D)``, scaled
    by ``D ** -0.5``; ``bias`` is an additive mask as :func:`~prunekit.tokens.matching.attention_bias` gives.

    >>> q = k = torch.zeros(1, 2, 3, 4)
    >>> attention_probs(q, k)[0, 0, 0].tolist()
    [0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if bias is not None:
        logits = logits + bias
    return logits.softmax(-1)


def sharpness(attn: torch.Tensor) -> torch.Tensor:
    """How sharp each query's attention is ``(..., N)``: ``log N - entropy`` of each row of ``attn``
    ``(..., N, N)``; 0 for uniform attention, ``log N`` for attention on one token.

    >>> sharpness(torch.tensor([[0.5, 0.5], [1.0, 0.0]])).tolist()
    [0.0, 0.6931471824645996]
    """
    n = attn.shape[-1]
    neg_entropy = (attn * attn.clamp_min(1e-30).log()).sum(-1)
    return math.log(n) + neg_entropy


def attention_saliency(attn: torch.Tensor) -> torch.Tensor:
    """Each token's saliency ``(B, N)`` from attention probabilities ``(B, heads, N, N)``: the attention
    it receives weighted by each query's :func:`sharpness`, averaged over heads and queries.

    >>> attn = torch.eye(3).expand(1, 2, 3, 3)      # every query attends to itself only
    >>> [round(v, 4) for v in attention_saliency(attn)[0].tolist()]   # log(3) / 3 each
    [0.3662, 0.3662, 0.3662]
    """
    weighted = attn * sharpness(attn)[..., None]      # row i scaled by the sharpness of query i
    return weighted.sum(-2).mean(1) / attn.shape[-1]


def saliency_from_qk(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                     query_stride: int = 1) -> torch.Tensor:
    """:func:`attention_saliency` of ``attention_probs(q, k, bias)`` ``(B, N)``, averaged over every
    ``query_stride``-th query only, and without a logarithm over the ``N x N`` map (each query's entropy
    is ``logsumexp - sum A * logits``, and ``sum_k A_ik logit_ik`` is ``q_i . (A K)_i`` plus ``A`` times the
    bias: one small matrix product instead of an elementwise pass over the map).

    A stride of 4 costs a quarter; on motion-vivit's first block it keeps 98% of the 59 most salient
    tokens of the full average, a stride of 8 (:data:`QUERY_STRIDE`, the default of
    :class:`SaliencyMerge`) 91% (92% on motion-vivit-pan; 64 eval clips each), and its top-1 after
    merging was no lower than stride 4's (0 to +1.5 points on 1,000 training clips of each, at two MAC
    levels).

    >>> q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    >>> bool(torch.allclose(saliency_from_qk(q, k), attention_saliency(attention_probs(q, k)), atol=1e-6))
    True
    """
    qs = q[:, :, ::query_stride] * q.shape[-1] ** -0.5
    logits = qs @ k.transpose(-1, -2)
    if bias is not None:
        logits = logits + bias
    attn = logits.softmax(-1)
    expected = (qs * (attn @ k)).sum(-1)          # sum_k A_ik logit_ik, without the bias
    if bias is not None:
        expected = expected + (attn * bias).sum(-1)
    sharp = math.log(k.shape[-2]) + expected - logits.logsumexp(-1)
    return (sharp.unsqueeze(-2) @ attn).squeeze(-2).mean(1) / qs.shape[-2]


def salient_order(scores: torch.Tensor, count: int, num_protected: int = 0) -> torch.Tensor:
    """A token order ``(B, N)`` per sample: the ``num_protected`` prefix tokens, then the ``count`` highest
    ``scores`` ``(B, N)`` among the others, then the rest; each part in its original order.

    >>> salient_order(torch.tensor([[9., .1, .8, .3, .7]]), count=2, num_protected=1).tolist()
    [[0, 2, 4, 1, 3]]
    """
    B, N = scores.shape
    p = num_protected
    pos = torch.arange(N, device=scores.device).expand(B, N)
    rank = torch.zeros(B, N - p, dtype=torch.long, device=scores.device)   # 0: salient, 1: background
    if count < N - p:
        rank = rank.scatter(1, scores[:, p:].topk(N - p - count, dim=1, largest=False).indices, 1)
    key = torch.cat([torch.zeros(B, p, dtype=torch.long, device=scores.device), rank + 1], dim=1) * N + pos
    return key.argsort(dim=1)


def background_matching(metric: torch.Tensor, r: int, *, kept: int, num_protected: int = 0,
                        scores: torch.Tensor | None = None, size: torch.Tensor | None = None) -> Matching:
    """Merge ``r`` background tokens of ``metric`` ``(B, N, C)`` by bipartite soft matching, keeping the prefix
    and ``kept`` salient tokens out.

    ``scores`` ``(B, N)``: the salient tokens are the ``kept`` highest (the output holds the prefix, the
    salient tokens, then the background left, each in order); ``None``: they are already the ``kept``
    tokens after the prefix (as the output of a previous call leaves them). ``r`` may exceed half the
    background: the matching is then repeated, each round on the merged tokens (their keys averaged
    by ``size`` ``(B, N, 1)``), until ``r`` tokens are gone (at most all but one background token).

    >>> keys = torch.tensor([[[1., 0.], [0., 1.], [1., 0.], [.6, .8], [1., 0.]]])
    >>> m = background_matching(keys, 1, kept=1, scores=torch.tensor([[0., 0., 5., 0., 0.]]))
    >>> m.merge(torch.arange(5.).view(1, 5, 1), "sum").flatten().tolist()   # 2 kept out; 0 and 4 merge
    [2.0, 3.0, 1.0, 4.0]
    >>> m.unmerge(torch.tensor([[[5.], [6.], [7.], [8.]]])).flatten().tolist()
    [8.0, 7.0, 5.0, 6.0, 8.0]
    >>> background_matching(keys, 3, kept=1, scores=torch.tensor([[0., 0., 5., 0., 0.]])).r   # in 2 rounds
    3
    """
    B, N, _ = metric.shape
    guard = num_protected + kept
    r = max(0, min(int(r), N - guard - 1))
    order = salient_order(scores, kept, num_protected) if scores is not None else None
    rounds: list[Matching] = []
    if order is not None:
        metric = _gather(metric, order)
        size = _gather(size, order) if size is not None else None
    while r > 0:
        step = bipartite_soft_matching(metric, min(r, (metric.shape[1] - guard) // 2), num_protected=guard)
        rounds.append(step)
        r -= step.r
        if r > 0:
            size = size if size is not None else metric.new_ones(B, metric.shape[1], 1)
            metric, size = step.merge(metric * size, "sum"), step.merge(size, "sum")

    def merge(x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        x = _gather(x, order) if order is not None else x
        for step in rounds:
            x = step.merge(x, mode)
        return x

    def unmerge(y: torch.Tensor) -> torch.Tensor:
        for step in reversed(rounds):
            y = step.unmerge(y)
        if order is None:
            return y
        return torch.zeros_like(y).scatter(1, order[..., None].expand(-1, -1, y.shape[-1]), y)

    return Matching(merge, unmerge, sum(step.r for step in rounds))


def _gather(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))


@dataclass(frozen=True)
class SaliencyMerge:
    """The early stage of a saliency-aware merge: in block ``layer`` (0 = the first) score the tokens
    (:func:`attention_saliency`), keep the ``keep`` share of the unprotected tokens that score highest out
    of the merging for ``early`` blocks, and merge ``background_r`` background tokens in each of those
    blocks (an int, or one per block, in as many rounds of bipartite matching as it takes; ``None``: the
    :data:`BACKGROUND_SHARE` of the background tokens left). Blocks before ``layer`` merge nothing; the ``r``
    schedule of the merge is laid over the blocks after the early stage. A first early block merging
    nothing turns the stage off.
    ``query_stride``: the saliency averages every ``query_stride``-th query (:func:`saliency_from_qk`).

    The defaults (keep :data:`KEEP`, :data:`BACKGROUND_SHARE` of the background, :data:`QUERY_STRIDE`) are
    those chosen on 1,000 *training* clips of motion-vivit and motion-vivit-pan
    at the MACs of 30 time tubes plus r 8, 12 and 16 (``benchmarks/bench_video_saliency.py`` measures
    them on the eval clips): with 196 tokens, 59 kept and 100 of the other 137 merged in block 0.

    >>> from prunekit.tokens.schedule import Constant
    >>> stage = SaliencyMerge(keep=0.3, early=2)
    >>> stage.plan(Constant(4), num_layers=4, num_tokens=197, num_protected=1)  # 59 kept, 137 background
    [100, 27, 4, 4]
    >>> SaliencyMerge(keep=0.3, background_r=100, early=1).plan(Constant(4), 4, 197, 1)  # in 2 rounds
    [100, 4, 4, 4]
    """

    keep: float = KEEP
    background_r: int | tuple[int, ...] | None = None
    early: int = 1
    layer: int = 0
    query_stride: int = QUERY_STRIDE

    def __post_init__(self):
        if not 0 <= float(self.keep) < 1:
            raise ValueError(f"SaliencyMerge.keep must be in [0, 1), got {self.keep!r}")
        if isinstance(self.early, bool) or int(self.early) != self.early or self.early < 1:
            raise ValueError(f"SaliencyMerge.early must be an int >= 1, got {self.early!r}")
        if isinstance(self.layer, bool) or int(self.layer) != self.layer or self.layer < 0:
            raise ValueError(f"SaliencyMerge.layer must be an int >= 0, got {self.layer!r}")
        if isinstance(self.query_stride, bool) or int(self.query_stride) != self.query_stride or self.query_stride < 1:
            raise ValueError(f"SaliencyMerge.query_stride must be an int >= 1, got {self.query_stride!r}")
        bg = self.background_r
        if bg is not None:
            values = (bg,) * self.early if isinstance(bg, int) and not isinstance(bg, bool) else tuple(bg)
            if len(values) != self.early or any(isinstance(v, bool) or int(v) != v or v < 0 for v in values):
                raise ValueError(f"SaliencyMerge.background_r must be None, an int >= 0 or {self.early} of them "
                                 f"(one per early block), got {bg!r}")
            object.__setattr__(self, "background_r", bg if isinstance(bg, int) else tuple(int(v) for v in values))

    def kept(self, num_tokens: int, num_protected: int) -> int:
        """How many tokens are kept out of the early merging, among ``num_tokens - num_protected``."""
        return min(num_tokens - num_protected, round(self.keep * (num_tokens - num_protected)))

    def plan(self, schedule: Schedule, num_layers: int, num_tokens: int, num_protected: int) -> list[int]:
        """The merges of every layer: ``background_r`` in the early blocks (at most all but one background
        token; ``None``: the :data:`BACKGROUND_SHARE` of them), then ``schedule`` over the blocks after."""
        p, kept = num_protected, self.kept(num_tokens, num_protected)
        rs = [0] * num_layers
        bg = self.background_r
        wanted = [None] * self.early if bg is None else [bg] * self.early if isinstance(bg, int) else list(bg)
        end = min(num_layers, self.layer + self.early)
        n = num_tokens
        for i in range(self.layer, end):
            background = n - p - kept
            want = wanted[i - self.layer]
            r = max(0, min(round(BACKGROUND_SHARE * background) if want is None else want, background - 1))
            if i == self.layer and r == 0:
                break
            rs[i] = r
            n -= r
        rs[end:] = schedule.per_layer(num_layers - end, n, p)
        return rs

    def check(self, num_layers: int, schedule: Schedule) -> None:
        """Refuse (``ValueError``) a stage that does not fit a stack of ``num_layers``."""
        if self.layer + self.early > num_layers:
            raise ValueError(f"SaliencyMerge(layer={self.layer}, early={self.early}) needs {self.layer + self.early} "
                             f"blocks, the model has {num_layers}")
        values = getattr(schedule, "values", None)
        after = num_layers - self.layer - self.early
        if isinstance(values, Sequence) and len(values) > after:
            raise ValueError(f"{len(values)} per-layer r values, but only {after} blocks follow the early stage; "
                             "the list is for those")
