"""Attention heads as pruning units, and the attribute fix-ups that keep attention modules working.

The tracer (``trace/``) finds heads from the attention op itself: the ``heads`` dimension of the
query/key/value fed to ``scaled_dot_product_attention`` is one unit set, shared by the fused ``qkv``
projection of timm, the separate q/k/v projections of Hugging Face models and the output
projection. Under grouped-query attention a query head is ``(kv_head, group member)``, so removing
a KV head removes its whole query group and the ratio stays consistent (Michel et al., NeurIPS 2019,
"Are Sixteen Heads Really Better than One?" for head pruning).

After the weights shrink, :func:`fix_attention` updates every attribute the forward reads:
``num_heads`` / ``attn_dim`` (timm), ``num_attention_heads`` / ``all_head_size`` (HF BERT/ViT),
``num_heads`` / ``split_size`` (HF GPT-2), ``num_key_value_heads`` and the shared HF config fields,
and swaps ``torch.nn.MultiheadAttention`` for :class:`PrunedMultiheadAttention`, whose forward allows
an inner width smaller than ``embed_dim``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunekit.structured.trace import TraceResult

__all__ = ["PrunedMultiheadAttention", "fix_attention", "sync_hf_config"]

Q_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads", "num_q_heads")
KV_HEAD_ATTRS = ("num_kv_heads", "num_key_value_heads", "n_kv_heads", "n_kv_head")
WIDTH_ATTRS = ("attn_dim", "all_head_size", "inner_dim", "split_size", "attention_dim")


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose heads were pruned: inner width ``num_heads * head_dim`` may
    differ from ``embed_dim``. Same call signature and outputs as the parent class."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        tgt, bsz, _ = query.shape
        src = key.shape[0]
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        h, d = self.num_heads, self.head_dim

        def heads(x, w, b, n):
            return F.linear(x, w, b).reshape(n, bsz, h, d).permute(1, 2, 0, 3)
        q, k, v = heads(query, w_q, b_q, tgt), heads(key, w_k, b_k, src), heads(value, w_v, b_v, src)
        mask = None
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.view(bsz, h, tgt, src)
            if mask.dtype == torch.bool:
                mask = torch.zeros_like(mask, dtype=q.dtype).masked_fill(mask, float("-inf"))
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(bsz, 1, 1, src)
            kpm = torch.zeros_like(kpm, dtype=q.dtype).masked_fill(kpm, float("-inf")) \
                if kpm.dtype == torch.bool else kpm.to(q.dtype)
            mask = kpm if mask is None else mask + kpm
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            attn = (q * d ** -0.5) @ k.transpose(-2, -1)
            if mask is not None:
                attn = attn + mask
            elif is_causal:
                attn = attn.masked_fill(torch.ones(tgt, src, dtype=torch.bool).triu(1), float("-inf"))
            attn = attn.softmax(-1)
            out = F.dropout(attn, dropout, self.training) @ v
        else:
            attn = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=is_causal and mask is None)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(tgt, bsz, h * d))
        if self.batch_first:
            out = out.transpose(0, 1)
        if attn is not None and average_attn_weights:
            attn = attn.mean(1)
        return out, attn


def _set_if(mod: Any, names: tuple[str, ...], old: int, new: int) -> list[str]:
    changed = []
    for n in names:
        if isinstance(getattr(mod, n, None), int) and not isinstance(getattr(mod, n), bool) \
                and getattr(mod, n) == old:
            setattr(mod, n, new)
            changed.append(n)
    return changed


def _fix_mha(mod: nn.MultiheadAttention, path: str, new_heads: int) -> None:
    from prunekit.errors import PruningError
    if isinstance(mod, PrunedMultiheadAttention):
        mod.num_heads = new_heads
        mod.embed_dim = mod.kdim = mod.vdim = mod.out_proj.out_features
        return
    if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
        raise PruningError(path, "prune heads", "nn.MultiheadAttention with kdim/vdim, bias_k or add_zero_attn "
                                                "is not supported; pass ignore=[...] for this module")
    mod.__class__ = PrunedMultiheadAttention
    mod._qkv_same_embed_dim = False  # turns off the fused fast paths that assume 3 x embed_dim projections
    mod.num_heads = new_heads
    mod.embed_dim = mod.out_proj.out_features
    mod.kdim = mod.vdim = mod.embed_dim
    mod.out_proj.in_features = mod.out_proj.weight.shape[1]


def fix_attention(model: nn.Module, trace: TraceResult, keep: dict) -> list[dict]:
    """Update head counts and widths on every module that ran attention; returns what changed."""
    g = trace.graph
    log = []
    for rec in trace.attention:
        old_q, old_kv = g.kept_size(rec.q_heads, {}), g.kept_size(rec.kv_heads, {})
        new_q, new_kv = g.kept_size(rec.q_heads, keep), g.kept_size(rec.kv_heads, keep)
        if (old_q, old_kv) == (new_q, new_kv):
            # residual width may still have changed for nn.MultiheadAttention
            try:
                mod = model.get_submodule(rec.module)
            except AttributeError:
                continue
            if isinstance(mod, nn.MultiheadAttention) and mod.out_proj.out_features != mod.embed_dim:
                _fix_mha(mod, rec.module, new_q)
            continue
        mod = model.get_submodule(rec.module) if rec.module else model
        if isinstance(mod, nn.MultiheadAttention):
            _fix_mha(mod, rec.module, new_q)
            log.append({"module": rec.module, "num_heads": [old_q, new_q]})
            continue
        changed = _set_if(mod, Q_HEAD_ATTRS, old_q, new_q)
        if old_kv != old_q:
            changed += _set_if(mod, KV_HEAD_ATTRS, old_kv, new_kv)
        changed += _set_if(mod, WIDTH_ATTRS, old_q * rec.head_dim, new_q * rec.head_dim)
        for sub_path, sub in mod.named_modules():  # e.g. a relative-position-bias submodule with num_heads
            if sub_path:
                changed += [f"{sub_path}.{a}" for a in _set_if(sub, Q_HEAD_ATTRS, old_q, new_q)]
            shape = getattr(sub, "bias_shape", None)  # timm RelPosBias: (N, N, heads) or (heads, H, W)
            if isinstance(shape, tuple) and shape and old_q != new_q:
                if shape[-1] == old_q:
                    sub.bias_shape = shape[:-1] + (new_q,)
                elif shape[0] == old_q:
                    sub.bias_shape = (new_q,) + shape[1:]
        log.append({"module": rec.module, "heads": [old_q, new_q], "kv_heads": [old_kv, new_kv],
                    "attributes": changed})
    return log


def sync_hf_config(model: nn.Module, trace: TraceResult, keep: dict) -> dict:
    """Write the new sizes into Hugging Face configs where every layer agrees on one value.

    Where layers differ (global ranking removed more heads in some layers), the per-module
    attributes carry the truth and the config keeps its value; ``config.prunekit_layer_heads`` lists
    the kept heads per attention module.
    """
    configs = {id(m.config): m.config for m in model.modules()
               if hasattr(getattr(m, "config", None), "to_dict")}
    if not configs:
        return {}
    g = trace.graph
    new_q = {g.kept_size(r.q_heads, keep) for r in trace.attention}
    new_kv = {g.kept_size(r.kv_heads, keep) for r in trace.attention}
    head_dims = {r.head_dim for r in trace.attention}
    changes: dict[str, Any] = {}
    hidden = None
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m.embedding_dim != getattr(next(iter(configs.values())), "hidden_size", -1):
            hidden = m.embedding_dim
    inter = {m.out_features for n, m in model.named_modules() if isinstance(m, nn.Linear)
             and n.endswith(("intermediate.dense", "mlp.up_proj", "mlp.fc1"))}
    inter |= {m.nf for n, m in model.named_modules() if n.endswith("mlp.c_fc") and hasattr(m, "nf")}
    for cfg in configs.values():
        if len(head_dims) == 1 and hasattr(cfg, "head_dim"):
            cfg.head_dim = next(iter(head_dims))
            changes["head_dim"] = cfg.head_dim
        if len(new_q) == 1 and hasattr(cfg, "num_attention_heads"):
            if len(head_dims) == 1 and not hasattr(cfg, "head_dim") and "head_dim" not in type(cfg).__dict__:
                cfg.head_dim = next(iter(head_dims))
            cfg.num_attention_heads = next(iter(new_q))
            changes["num_attention_heads"] = cfg.num_attention_heads
        elif len(new_q) > 1:
            cfg.prunekit_layer_heads = {r.module: g.kept_size(r.q_heads, keep) for r in trace.attention}
            changes["prunekit_layer_heads"] = cfg.prunekit_layer_heads
        if len(new_kv) == 1 and getattr(cfg, "num_key_value_heads", None) is not None:
            cfg.num_key_value_heads = next(iter(new_kv))
            changes["num_key_value_heads"] = cfg.num_key_value_heads
        if hidden is not None and hasattr(cfg, "hidden_size"):
            cfg.hidden_size = hidden
            changes["hidden_size"] = hidden
        if len(inter) == 1:
            for key in ("intermediate_size", "n_inner"):
                if hasattr(cfg, key):
                    setattr(cfg, key, next(iter(inter)))
                    changes[key] = next(iter(inter))
    return changes
