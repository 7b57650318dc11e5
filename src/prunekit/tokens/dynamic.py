"""Learned token pruning (DynamicViT) for timm ViTs with a class token.

Rao, Zhao, Liu, Lu, Zhou, Hsieh, "DynamicViT: Efficient Vision Transformers with Dynamic Token
Sparsification", NeurIPS 2021. Before chosen blocks (``stages``), a light prediction module scores
every remaining patch token from its own features and a global feature (the mean of the kept
tokens) and keeps a fraction ``keep`` of them, so the kept share falls geometrically: ``keep``,
``keep**2``, ... (DeiT-S in the paper: blocks 3, 6, 9 at 0.7, -37% FLOPs for -0.5 pt).

- **Training** (``model.train()``): nothing is removed; a hard Gumbel-softmax sample of each token's
  keep/drop decision (straight-through) multiplies the previous mask, and attention leaves dropped
  tokens out as keys with the paper's masked softmax ``exp(s_ij) G_j / sum_k exp(s_ik) G_k`` (each
  token still sees itself), so gradients reach the scores of dropped tokens.
  :mod:`prunekit.tokens.dynamic_train` has the losses and the trainer.
- **Inference** (``model.eval()``): the top ``keep`` share of tokens by predicted keep-probability
  is gathered, the rest are gone, so every later block really runs on fewer tokens.

The ViT's own modules compute everything (blocks are split into their attention and MLP halves by
:class:`prunekit.tokens.adapters.timm.TimmAdapter`); the wrapper only adds the ``scorers``.

>>> import torch
>>> from timm.models.vision_transformer import VisionTransformer
>>> vit = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=10)
>>> dyn = DynamicViT(vit, stages=(1, 2), keep=0.5).eval()
>>> dyn.token_counts()          # patch tokens entering each block
[64, 32, 16, 16]
>>> dyn(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.tokens.adapters.timm import TimmAdapter

__all__ = ["TokenScorer", "DynamicViT", "masked_attention", "sample_topk"]


class TokenScorer(nn.Module):
    """DynamicViT's prediction module: keep/drop logits ``(B, N, 2)`` for tokens ``(B, N, C)``.

    Half of a projected token is local; the other half, averaged over the tokens still kept
    (``mask`` ``(B, N, 1)``), is a global summary; an MLP of both gives the two logits (keep first).
    The output bias starts at the log-odds of ``keep``, so training starts near the share to keep.
    """

    def __init__(self, dim: int, keep: float = 0.5):
        super().__init__()
        half = dim // 2
        self.proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * half), nn.GELU())
        self.out = nn.Sequential(nn.Linear(2 * half, half), nn.GELU(), nn.Linear(half, max(half // 2, 1)), nn.GELU(),
                                 nn.Linear(max(half // 2, 1), 2))
        if 0.0 < keep < 1.0:  # start out keeping about ``keep`` of the tokens (a Gumbel sample keeps w.p. sigmoid)
            odds = math.log(keep / (1.0 - keep))
            with torch.no_grad():
                self.out[-1].bias.copy_(torch.tensor([odds / 2, -odds / 2]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        local, glob = self.proj(x).chunk(2, dim=-1)
        if mask is None:
            glob = glob.mean(1, keepdim=True)
        else:
            glob = (glob * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1e-6)
        return self.out(torch.cat([local, glob.expand_as(local)], dim=-1))


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, scale: float,
                     eps: float = 1e-6) -> torch.Tensor:
    """Attention ``(B, N, H*D)`` of ``(B, H, N, D)`` heads where key ``j`` counts with weight ``keep[b, j]``
    (a query always counts itself): DynamicViT's differentiable masked softmax.

    >>> q = k = v = torch.randn(1, 2, 4, 8)
    >>> full = masked_attention(q, k, v, torch.ones(1, 4), 8 ** -0.5)
    >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 4, 16)
    >>> bool((full - ref).abs().max() < 1e-5)
    True
    """
    B, H, N, D = q.shape
    s = (q @ k.transpose(-2, -1)) * scale
    s = s - s.amax(-1, keepdim=True).detach()
    eye = torch.eye(N, device=q.device, dtype=q.dtype)
    policy = keep[:, None, None, :].to(q.dtype) * (1 - eye) + eye
    w = s.exp() * policy
    attn = (w + eps / N) / (w.sum(-1, keepdim=True) + eps)
    return (attn @ v).transpose(1, 2).reshape(B, N, H * D)


def sample_topk(score: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """A ``(B, N)`` keep mask of exactly ``k`` of the still-kept tokens (``mask``), drawn without
    replacement by the Gumbel-top-k trick on the keep log-odds ``score``; its value is 0/1 and its
    gradient flows through ``sigmoid(score)`` (straight-through).

    >>> s = torch.tensor([[3.0, -2.0, 1.0, 0.5]])
    >>> m = sample_topk(s, torch.tensor([[1.0, 1.0, 0.0, 1.0]]), 2)
    >>> m.tolist() in ([[1.0, 0.0, 0.0, 1.0]], [[1.0, 1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0, 1.0]])
    True
    """
    u = torch.rand_like(score).clamp(1e-9, 1.0 - 1e-9)
    noisy = (score.detach() - torch.log(-torch.log(u))).masked_fill(mask <= 0, float("-inf"))
    hard = torch.zeros_like(score).scatter(1, noisy.topk(k, dim=1).indices, 1.0)
    soft = torch.sigmoid(score)
    return hard + (soft - soft.detach())   # exactly 0/1 in value


class DynamicViT(nn.Module):
    """A timm ``VisionTransformer`` (class-token head) with DynamicViT token scorers before ``stages``.

    ``stages``: indices of the blocks before which tokens are pruned (increasing, >= 1);
    ``keep``: the share of the remaining patch tokens kept at each stage. An untrained scorer keeps
    an arbitrary share: train with :func:`prunekit.train.fit_dynamic`.

    ``sampling`` picks the training-time decisions (inference is top-k either way):

    - ``"gumbel"`` (the paper): each token is kept or dropped by its own hard Gumbel-softmax sample,
      and the keep-ratio loss pulls the share kept towards ``keep**s``;
    - ``"topk"``: exactly the inference count is kept at every stage, drawn by the Gumbel-top-k trick
      (the top ``k`` of log-odds plus Gumbel noise: sampling without replacement), with a
      straight-through gradient through the keep-probability. Training then keeps the very share
      that inference keeps, and the scorer is trained to rank, which is all top-k uses.
    """

    SAMPLINGS = ("gumbel", "topk")
    sampling = "gumbel"   # files saved before ``sampling`` existed load with the paper's sampling

    def __init__(self, vit: nn.Module, stages: Sequence[int] = (3, 6, 9), keep: float = 0.7,
                 sampling: str = "gumbel"):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer
        name, op = type(vit).__name__, "add DynamicViT token pruning"
        if not isinstance(vit, VisionTransformer):
            raise PruningError(name, op, "it is not a timm VisionTransformer")
        TimmAdapter().targets(vit)  # refuses blocks the adapter cannot split
        if getattr(vit, "global_pool", None) != "token" or not vit.has_class_token:
            raise PruningError(name, op, f"its head pools with global_pool={vit.global_pool!r}; pruned tokens "
                               "need a class-token head (global_pool='token')")
        stages = tuple(int(s) for s in stages)
        depth = len(vit.blocks)
        if not stages or list(stages) != sorted(set(stages)) or stages[0] < 1 or stages[-1] >= depth:
            raise PruningError(name, op, f"stages={stages}: give increasing block indices in 1..{depth - 1}")
        if not 0.0 < float(keep) <= 1.0:
            raise PruningError(name, op, f"keep={keep}: the share of tokens kept per stage must be in (0, 1]")
        if sampling not in self.SAMPLINGS:
            raise PruningError(name, op, f"sampling={sampling!r}: choose one of {', '.join(self.SAMPLINGS)}")
        self.sampling = sampling
        self.vit = vit
        self.stages = stages
        self.keep = float(keep)
        self.scorers = nn.ModuleList(TokenScorer(vit.embed_dim, self.keep) for _ in stages)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)

    def token_counts(self, num_patches: int | None = None) -> list[int]:
        """Patch tokens entering each block at inference."""
        n = int(num_patches or self.vit.patch_embed.num_patches)
        counts, kept = [], n
        for i in range(len(self.vit.blocks)):
            if i in self.stages:
                kept = max(1, round(n * self.keep ** (self.stages.index(i) + 1)))
            counts.append(kept)
        return counts

    def keep_targets(self) -> list[float]:
        """The share of the patch tokens meant to be left after each stage: ``keep**1, keep**2, ...``."""
        return [self.keep ** (s + 1) for s in range(len(self.stages))]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))

    def forward_with_masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(logits, final tokens, masks)``. Training: every token stays, ``masks`` are the ``(B, N)``
        keep decisions after each stage. Inference: only kept tokens remain, ``masks`` are the kept
        original patch indices ``(B, K)`` after each stage."""
        t = self._embed(x)
        t, masks = (self._train_blocks if self.training else self._pruned_blocks)(t)
        t = self.vit.norm(t)
        return self.vit.forward_head(t), t, masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_masks(x)[0]

    def _train_blocks(self, t: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        adapter, p = TimmAdapter(), self.num_prefix_tokens
        B, N, _ = t.shape
        mask = t.new_ones(B, N - p)
        counts = self.token_counts(N - p)
        masks = []
        for i, blk in enumerate(self.vit.blocks):
            if i in self.stages:
                logits = self.scorers[self.stages.index(i)](t[:, p:], mask[..., None])
                if self.sampling == "topk":
                    hard = sample_topk(logits[..., 0] - logits[..., 1], mask, counts[i])
                else:
                    hard = nn.functional.gumbel_softmax(logits, hard=True)[..., 0]
                mask = mask * hard
                masks.append(mask)
            keep = torch.cat([t.new_ones(B, p), mask], dim=1)
            attend = lambda q, k, v, blk=blk, keep=keep: masked_attention(q, k, v, keep, blk.attn.scale)
            t, _, _ = adapter.attention(blk, t, None, attend)
            t = adapter.mlp(blk, t)
        return t, masks

    def _pruned_blocks(self, t: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        adapter, p = TimmAdapter(), self.num_prefix_tokens
        counts = self.token_counts(t.shape[1] - p)
        index = torch.arange(t.shape[1] - p, device=t.device).expand(t.shape[0], -1)
        kept = []
        for i, blk in enumerate(self.vit.blocks):
            if i in self.stages:
                logits = self.scorers[self.stages.index(i)](t[:, p:])
                score = logits[..., 0] - logits[..., 1]  # log-odds of keeping
                top = score.topk(counts[i], dim=1).indices.sort(dim=1).values
                t = torch.cat([t[:, :p], t[:, p:].gather(1, top[..., None].expand(-1, -1, t.shape[-1]))], dim=1)
                index = index.gather(1, top)
                kept.append(index)
            t, _, _ = adapter.attention(blk, t, None)
            t = adapter.mlp(blk, t)
        return t, kept
