"""Plain top-k token dropping by class-token attention: the training-free reference that token merging
is measured against.

EViT-style inattentive-token removal without fusion (Liang et al., "Not All Patches are What You
Need", ICLR 2022), as used for comparison in ToMe (Bolya et al., ICLR 2023): after the attention of
a layer, keep the prefix tokens and the ``N - r`` patch tokens the class token attends to most
(averaged over heads); the others are discarded. :func:`drop` patches a model like
:func:`prunekit.tokens.merge` and is undone by :func:`prunekit.tokens.unpatch`.
"""
from __future__ import annotations

import torch
from torch import nn

from prunekit.tokens.schedule import RSpec

__all__ = ["drop", "class_attention", "topk_keep", "keep_tokens"]


def class_attention(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of the first token (class) to every token ``(B, N)``, averaged over heads.

    >>> import torch
    >>> q = k = torch.randn(2, 4, 5, 8)
    >>> class_attention(q, k).sum(-1).allclose(torch.ones(2))
    True
    """
    logits = (q[:, :, :1] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if bias is not None:
        logits = logits + bias
    return logits.softmax(-1).mean(1)[:, 0]


def topk_keep(scores: torch.Tensor, r: int, num_protected: int = 1) -> torch.Tensor:
    """Indices ``(B, N - r)`` of the tokens kept: the prefix, then the ``N - p - r`` highest scores in order.

    >>> import torch
    >>> topk_keep(torch.tensor([[9., .1, .5, .3, .7]]), r=2).tolist()
    [[0, 2, 4]]
    """
    p = num_protected
    body = scores[:, p:]
    keep = body.topk(body.shape[1] - r, dim=-1).indices.sort(dim=-1).values + p
    prefix = torch.arange(p, device=scores.device).expand(scores.shape[0], p)
    return torch.cat([prefix, keep], dim=1)


def keep_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Gather tokens ``keep`` ``(B, K)`` of ``x`` ``(B, N, C)``."""
    return x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))


def drop(model: nn.Module, r: RSpec = 0, *, trace_source: bool = False) -> nn.Module:
    """Patch ``model`` in place to drop ``r`` tokens per layer by class attention (a reference reducer).

    The patched stack returns only the kept tokens (nothing to restore them from), so use it with
    class-token heads.

    >>> import timm, torch
    >>> from prunekit.tokens import unpatch
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2).eval()
    >>> _ = drop(vit, r=4)
    >>> vit.forward_features(torch.randn(1, 3, 32, 32)).shape   # 1 + 16 - 2 * 4
    torch.Size([1, 9, 192])
    >>> _ = unpatch(vit)
    """
    from prunekit.tokens.merge import merge
    return merge(model, r, prop_attn=False, trace_source=trace_source, reducer="drop")
