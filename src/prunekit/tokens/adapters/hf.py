"""Hugging Face encoders for token merging: BERT-style text encoders (with padding masks) and ViT/DeiT.

ToMe: Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023. The model's own ``forward``
(embeddings, mask creation, final norm, pooler, heads) runs unchanged: only the iteration over its
layer list (``encoder.layer`` for BERT, ``layers`` for ViT/DeiT) is redirected to the merging engine,
which drives each layer through its own submodules:

- BERT-style (``attention.self.{query,key,value}``, ``attention.output``, ``feed_forward_chunk``):
  attention with ``F.scaled_dot_product_attention``, then ``attention.output(o, x)`` (dense, dropout,
  post-LayerNorm with the residual), merge, then ``feed_forward_chunk``;
- ViT/DeiT-style (``layernorm_before``, ``attention.{q,k,v,o}_proj``, ``dropout``, ``layernorm_after``,
  ``mlp``): the two pre-norm residual halves.

Padding: the key-padding mask the model hands its layers gives every padding token size 0, so it is
masked out of attention (``log 0``), matched only with other padding first and never averaged into a
real token. The stack returns its tokens un-merged to the full padded length, so ``last_hidden_state``
keeps its shape, the CLS pooler is unchanged and masked mean pooling over it equals the size-weighted,
mask-aware mean of the merged tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from prunekit.tokens.adapters import Target, sdpa_heads

__all__ = ["HFAdapter"]


def _is_bert_layer(layer: nn.Module) -> bool:
    att = getattr(layer, "attention", None)
    sa = getattr(att, "self", None)
    return (sa is not None and all(hasattr(sa, n) for n in ("query", "key", "value"))
            and hasattr(att, "output") and hasattr(layer, "feed_forward_chunk")
            and not getattr(layer, "add_cross_attention", False))


def _is_vit_layer(layer: nn.Module) -> bool:
    att = getattr(layer, "attention", None)
    return (att is not None and all(hasattr(att, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
            and all(hasattr(layer, n) for n in ("layernorm_before", "layernorm_after", "mlp", "dropout")))


def _prefix_tokens(owner: nn.Module) -> int:
    emb = getattr(owner, "embeddings", None)
    n = 1  # [CLS] for text encoders, the class token for ViT
    if emb is not None and getattr(emb, "distillation_token", None) is not None:
        n = 2
    if emb is not None and getattr(emb, "register_tokens", None) is not None:
        n += emb.register_tokens.shape[1]
    return n


def _valid_from_mask(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """Key validity ``(B, N)`` from the mask a HF model passes its layers (bool or additive, 2-D or 4-D)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        valid = mask
    elif mask.is_floating_point():
        valid = mask > torch.finfo(mask.dtype).min / 2
    else:  # 0/1 integers
        valid = mask > 0
    if valid.dim() == 4:
        valid = valid.any(dim=-2)[:, 0]
    elif valid.dim() == 3:
        valid = valid.any(dim=-2)
    valid = valid.expand(x.shape[0], x.shape[1])
    return None if bool(valid.all()) else valid


class HFAdapter:
    name = "hf"

    def targets(self, root: nn.Module) -> list[Target]:
        found, owners = [], {}
        for name, module in root.named_modules():
            if hasattr(module, "embeddings"):
                owners[name] = module
            if type(module) is not nn.ModuleList or len(module) == 0:
                continue
            layers = list(module._modules.values())
            if all(_is_bert_layer(m) for m in layers) or all(_is_vit_layer(m) for m in layers):
                owner_name = max((o for o in owners if name.startswith(o + ".") or o == ""), key=len,
                                 default=None)
                owner = owners[owner_name] if owner_name is not None else root
                found.append(Target(module, _prefix_tokens(owner), owner))
        return found

    def enter(self, target: Target, hidden_states, attention_mask=None, encoder_hidden_states=None,
              *args, **kwargs):
        if encoder_hidden_states is not None or kwargs.get("encoder_attention_mask") is not None:
            raise NotImplementedError("token merging patches encoders, not cross-attention decoders")
        return hidden_states, _valid_from_mask(attention_mask, hidden_states), _same

    def install(self, target: Target) -> None:
        pass

    def uninstall(self, target: Target) -> None:
        pass

    def attention(self, layer: nn.Module, x, bias):
        B, N, _ = x.shape
        if _is_vit_layer(layer):
            att = layer.attention
            y = layer.layernorm_before(x)
            shape = (B, N, -1, att.head_dim)
            q = att.q_proj(y).view(shape).transpose(1, 2)
            k = att.k_proj(y).view(shape).transpose(1, 2)
            v = att.v_proj(y).view(shape).transpose(1, 2)
            p = att.attention_dropout if att.training else 0.0
            o = att.o_proj(sdpa_heads(q, k, v, bias, p, att.scaling))
            return x + layer.dropout(o), q, k
        sa = layer.attention.self
        shape = (B, N, -1, sa.attention_head_size)
        q = sa.query(x).view(shape).transpose(1, 2)
        k = sa.key(x).view(shape).transpose(1, 2)
        v = sa.value(x).view(shape).transpose(1, 2)
        p = sa.dropout.p if sa.training else 0.0
        o = sdpa_heads(q, k, v, bias, p, getattr(sa, "scaling", sa.attention_head_size ** -0.5))
        return layer.attention.output(o, x), q, k

    def mlp(self, layer: nn.Module, x):
        if _is_vit_layer(layer):
            return x + layer.dropout(layer.mlp(layer.layernorm_after(x)))
        return layer.feed_forward_chunk(x)


def _same(x):
    return x
