"""``nn.TransformerEncoder`` of ``nn.TransformerEncoderLayer`` (built on ``nn.MultiheadAttention``) for
token merging.

ToMe: Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023. The encoder's own ``forward``
(mask canonicalisation, final norm) runs unchanged; its loop over ``layers`` is redirected to the
merging engine, and its nested-tensor fast path is switched off while patched (``use_nested_tensor``).
Each layer runs through its own modules: the attention reuses ``self_attn``'s input and output
projections around ``F.scaled_dot_product_attention``; ``norm1``/``norm2``, ``dropout1`` and the
layer's ``_ff_block`` keep their post-norm or pre-norm (``norm_first``) order. Tokens are returned
un-merged to the input length, with ``src_key_padding_mask`` (padding never merged into real tokens)
and ``batch_first`` either way. No prefix token is protected unless ``num_protected`` says so.
"""
from __future__ import annotations

import torch
from torch import nn

from prunekit.tokens.adapters import Target, sdpa_heads

__all__ = ["TorchMHAAdapter"]


class TorchMHAAdapter:
    name = "torch_mha"

    def targets(self, root: nn.Module) -> list[Target]:
        found = []
        for module in root.modules():
            if not isinstance(module, nn.TransformerEncoder):
                continue
            for i, layer in enumerate(module.layers):
                if type(layer) is not nn.TransformerEncoderLayer:
                    raise NotImplementedError(f"layers[{i}] is {type(layer).__name__}, expected "
                                              "nn.TransformerEncoderLayer")
                sa = layer.self_attn
                if sa.bias_k is not None or sa.add_zero_attn:
                    raise NotImplementedError("nn.MultiheadAttention with bias_kv / add_zero_attn")
            found.append(Target(module.layers, 0, module))
        return found

    def install(self, target: Target) -> None:
        enc = target.owner
        if "use_nested_tensor" in enc.__dict__:
            target.saved["use_nested_tensor"] = enc.use_nested_tensor
            enc.use_nested_tensor = False

    def uninstall(self, target: Target) -> None:
        if "use_nested_tensor" in target.saved:
            target.owner.use_nested_tensor = target.saved.pop("use_nested_tensor")

    def enter(self, target: Target, src, src_mask=None, is_causal=None, src_key_padding_mask=None):
        if src_mask is not None or is_causal:
            raise NotImplementedError("token merging supports key-padding masks only (no attention mask, "
                                      "no causal attention)")
        batch_first = target.container[0].self_attn.batch_first
        x = src if batch_first else src.transpose(0, 1)
        valid = None
        if src_key_padding_mask is not None:
            m = src_key_padding_mask
            valid = ~m if m.dtype == torch.bool else (m > torch.finfo(m.dtype).min / 2)
            valid = None if bool(valid.all()) else valid
        return x, valid, (_same if batch_first else _to_seq_first)

    def attention(self, layer: nn.TransformerEncoderLayer, x, bias):
        sa = layer.self_attn
        y = layer.norm1(x) if layer.norm_first else x
        B, N, E = y.shape
        if sa._qkv_same_embed_dim:
            q, k, v = nn.functional.linear(y, sa.in_proj_weight, sa.in_proj_bias).chunk(3, dim=-1)
        else:
            bq, bk, bv = (sa.in_proj_bias.chunk(3) if sa.in_proj_bias is not None else (None,) * 3)
            q = nn.functional.linear(y, sa.q_proj_weight, bq)
            k = nn.functional.linear(y, sa.k_proj_weight, bk)
            v = nn.functional.linear(y, sa.v_proj_weight, bv)
        h = sa.num_heads
        q, k, v = (t.reshape(B, N, h, -1).transpose(1, 2) for t in (q, k, v))
        o = sa.out_proj(sdpa_heads(q, k, v, bias, sa.dropout if sa.training else 0.0, None))
        if layer.norm_first:
            return x + layer.dropout1(o), q, k
        return layer.norm1(x + layer.dropout1(o)), q, k

    def mlp(self, layer: nn.TransformerEncoderLayer, x):
        if layer.norm_first:
            return x + layer._ff_block(layer.norm2(x))
        return layer.norm2(x + layer._ff_block(x))


def _same(x):
    return x


def _to_seq_first(x):
    return x.transpose(0, 1)
