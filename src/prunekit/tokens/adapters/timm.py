"""timm ``VisionTransformer`` (and DeiT, DeiT-III, DINOv2-style, CLIP-style relatives) for token merging.

ToMe: Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023. The reference implementation
copies timm's ``Block.forward`` and ``Attention.forward`` and so skips LayerScale and qk-norm; here a
block is split into its two residual halves, each made of the block's own modules:

- ``x + drop_path1(ls1(attn'(norm1(x))))`` where ``attn'`` reuses ``attn.qkv``, ``q_norm``,
  ``k_norm``, ``norm``, ``gate`` and ``proj`` around ``F.scaled_dot_product_attention`` (fused, with
  proportional attention as an additive mask) and also returns queries and keys;
- ``x + drop_path2(ls2(mlp(norm2(x))))``.

The prefix tokens (class, distillation, register: ``model.num_prefix_tokens``) are protected. The
patched ``model.blocks`` returns the tokens un-merged to full length, so timm's own final norm, pooling
(token, avg, max, attention pool) and heads run unchanged: averaging the restored tokens *is* the
size-weighted average of the merged tokens, and every downstream consumer of ``forward_features``
(dense heads) still gets one token per patch.
"""
from __future__ import annotations

from torch import nn

from prunekit.tokens.adapters import Target, sdpa_heads

__all__ = ["TimmAdapter", "token_grid"]


def token_grid(vit: nn.Module) -> tuple[int, int, int] | None:
    """``(T, H, W)`` of a timm ViT's patch tokens: ``(1, rows, cols)`` for images; a video patch embed
    that folds time into rows (``frames`` and ``tubelet`` attributes, as :class:`prunekit.zoo.models.
    TubeletEmbed`) gives ``T = frames / tubelet``. ``None`` when the grid can change (dynamic size)."""
    embed = vit.patch_embed
    grid = getattr(embed, "grid_size", None)
    if grid is None or getattr(vit, "dynamic_img_size", False) or getattr(embed, "dynamic_img_size", False):
        return None
    rows, cols = int(grid[0]), int(grid[1])
    frames, tubelet = getattr(embed, "frames", None), getattr(embed, "tubelet", None)
    t = int(frames) // int(tubelet) if frames and tubelet else 1
    if rows % t:
        return None
    return t, rows // t, cols


def _timm_classes():
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer
    return VisionTransformer, Block, Attention


class TimmAdapter:
    name = "timm"

    def targets(self, root: nn.Module) -> list[Target]:
        try:
            VisionTransformer, Block, Attention = _timm_classes()
        except ImportError:  # pragma: no cover - timm is a dependency
            return []
        found = []
        for module in root.modules():
            if not isinstance(module, VisionTransformer):
                continue
            if type(module.blocks) is not nn.Sequential:
                raise NotImplementedError(f"{type(module).__name__}.blocks is {type(module.blocks).__name__}, "
                                          "expected nn.Sequential")
            for i, blk in enumerate(module.blocks):
                if not isinstance(blk, Block) or type(blk).forward is not Block.forward:
                    raise NotImplementedError(f"blocks[{i}] is {type(blk).__name__}: token merging supports "
                                              "timm's pre-norm Block (ResPost/Parallel blocks are not wired)")
                attn = blk.attn
                if not isinstance(attn, Attention) or type(attn).forward is not Attention.forward:
                    raise NotImplementedError(f"blocks[{i}].attn is {type(attn).__name__}: only timm "
                                              "layers.Attention is supported (no RoPE variants)")
            found.append(Target(module.blocks, int(module.num_prefix_tokens), module, grid=token_grid(module)))
        return found

    def enter(self, target: Target, x, *args, **kwargs):
        if args or kwargs:
            raise TypeError("a token-merging timm block stack takes only the tokens")
        return x, None, _same

    def install(self, target: Target) -> None:
        pass

    def uninstall(self, target: Target) -> None:
        pass

    def attention(self, blk: nn.Module, x, bias, attend=None):
        """The attention half of ``blk``; ``attend(q, k, v) -> (B, N, H*D)`` replaces the fused kernel
        (``bias`` is then ignored), e.g. DynamicViT's masked attention while training."""
        attn = blk.attn
        y = blk.norm1(x)
        B, N, _ = y.shape
        gate = getattr(attn, "gate", None)
        gate = gate(y).sigmoid() if gate is not None else None
        qkv = attn.qkv(y).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if attend is not None:
            o = attend(q, k, v)
        else:
            o = sdpa_heads(q, k, v, bias, attn.attn_drop.p if attn.training else 0.0, attn.scale)
        o = attn.norm(o)
        if gate is not None:
            o = o * gate
        o = attn.proj_drop(attn.proj(o))
        return x + blk.drop_path1(blk.ls1(o)), q, k

    def mlp(self, blk: nn.Module, x):
        return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def _same(x):
    return x
