"""Token pruning by class-token attention: top-k dropping and EViT's fusion of the inattentive tokens.

EViT (Liang et al., "Not All Patches are What You Need", ICLR 2022): after the attention of a layer,
keep the prefix tokens and the patch tokens the class token attends to most (averaged over heads).

- :func:`drop` discards the others (the reference ToMe compares with, Bolya et al., ICLR 2023);
- :func:`evit` fuses them into one token, their average weighted by the class attention, so their
  information is kept in a single token. To remove ``r`` tokens it keeps ``N - r - 1`` and fuses
  ``r + 1``, so both meet the same token counts as ToMe at the same ``r``.

Both patch a model like :func:`prunekit.tokens.merge` (training-free, or fine-tuned through the
patched model: the kept tokens and the fused one carry gradients) and are undone by
:func:`prunekit.tokens.unpatch`.
"""
from __future__ import annotations

import torch
from torch import nn

from prunekit.tokens.schedule import RSpec

__all__ = ["drop", "evit", "class_attention", "topk_keep", "keep_tokens", "fuse_inattentive"]


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


def fuse_inattentive(x: torch.Tensor, size: torch.Tensor | None, scores: torch.Tensor, keep: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """EViT's fusion: tokens ``keep`` ``(B, K)`` of ``x`` ``(B, N, C)`` followed by one token, the average of
    all the others weighted by ``scores`` ``(B, N)`` (class attention). ``size`` ``(B, N, 1)`` (tokens
    each one stands for) is gathered the same way and summed into the fused token's.

    >>> import torch
    >>> x = torch.arange(5.).view(1, 5, 1)
    >>> out, _ = fuse_inattentive(x, None, torch.tensor([[.5, .1, .1, .2, .1]]), torch.tensor([[0, 3]]))
    >>> out.flatten().tolist()   # tokens 0 and 3, then (0.1*1 + 0.1*2 + 0.1*4) / 0.3
    [0.0, 3.0, 2.3333332538604736]
    """
    rest = torch.ones_like(scores).scatter_(1, keep, 0.0)
    w = scores * rest
    if size is not None:
        w = w * (size[..., 0] > 0)   # padding never enters the fused token
    total = w.sum(1, keepdim=True)
    fused = (w[..., None] * x).sum(1, keepdim=True) / total.clamp_min(torch.finfo(x.dtype).tiny)[..., None]
    out = torch.cat([keep_tokens(x, keep), fused], dim=1)
    if size is None:
        return out, None
    fused_size = (size * rest[..., None]).sum(1, keepdim=True)
    return out, torch.cat([keep_tokens(size, keep), fused_size], dim=1)


def evit(model: nn.Module, r: RSpec = 0, *, trace_source: bool = False, prop_attn: bool = False,
         target_macs: float | None = None, example_inputs=None) -> nn.Module:
    """Patch ``model`` in place for EViT: after each layer's attention keep the most attended patch tokens
    and fuse ``r + 1`` inattentive ones into one (``r`` fewer tokens per layer, as ToMe's ``r``).

    ``r`` takes what :func:`prunekit.tokens.merge` takes (an int, a list per layer, a schedule) or
    ``target_macs``. ``prop_attn``: weight attention by the number of tokens the fused one stands for
    (off, as in the paper). Supported models and undo: as :func:`prunekit.tokens.merge`.

    >>> import timm, torch
    >>> from prunekit.tokens import last_info
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=3).eval()
    >>> logits = evit(vit, r=[4, 2, 0], trace_source=True)(torch.randn(1, 3, 64, 64))
    >>> last_info(vit).tokens, last_info(vit).size.sum().item()   # 17 tokens, 3 of them fused into 1, ...
    ([13, 11, 11], 17.0)
    """
    from prunekit.tokens.merge import merge
    return merge(model, r, prop_attn=prop_attn, trace_source=trace_source, reducer="fuse", target_macs=target_macs,
                 example_inputs=example_inputs)


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
