"""Shared by the structured-pruning tests: model builders and the exactness check."""
from __future__ import annotations

import copy

import torch
from torch import nn

import prunekit
from prunekit.measure import run_model
from prunekit.structured.trace import flat_tensors as _tensors


def outputs(model: nn.Module, inputs) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return [t.detach().clone() for t in _tensors(run_model(model, inputs))]


def zero_removed(model: nn.Module, inputs, result, ignore=()) -> None:
    """Zero, in the dense ``model``, every parameter slice that ``result`` removed from its copy."""
    grps = {g.id: g for g in prunekit.groups(model, inputs, ignore=ignore)}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for d in result.decisions:
            if not d["removed"]:
                continue
            removed = torch.tensor(d["removed"])
            for occ in grps[d["group"]].occurrences:
                if occ.name not in params:
                    continue
                pos = torch.isin(occ.owner, removed).nonzero().flatten()
                params[occ.name].index_fill_(occ.dim, pos, 0.0)


def assert_exact_after_zeroing(model: nn.Module, inputs, atol: float = 1e-4, **kw):
    """Pruning units whose weights are zero must not change the output (proves index bookkeeping)."""
    pruned = copy.deepcopy(model)
    res = prunekit.prune(pruned, inputs, **kw)
    zero_removed(model, inputs, res, ignore=kw.get("ignore", ()))
    ref, out = outputs(model, inputs), outputs(pruned, inputs)
    assert any(d["removed"] for d in res.decisions)
    assert [r.shape for r in ref] == [o.shape for o in out]
    for r, o in zip(ref, out, strict=False):
        assert torch.allclose(r.float(), o.float(), atol=atol, rtol=1e-4), float((r - o).abs().max())
    return pruned, res


def hf_bert():
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    return BertModel(cfg).eval(), {"input_ids": torch.randint(0, 100, (2, 8)),
                                   "attention_mask": torch.ones(2, 8, dtype=torch.long)}


def hf_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=32)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), {"input_ids": torch.randint(0, 100, (2, 8)), "use_cache": False}


def hf_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).eval(), {"input_ids": torch.randint(0, 100, (2, 8)), "use_cache": False}


def hf_vit():
    from transformers import ViTConfig, ViTForImageClassification
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    image_size=32, patch_size=8, num_labels=5)
    torch.manual_seed(0)
    return ViTForImageClassification(cfg).eval(), {"pixel_values": torch.randn(2, 3, 32, 32)}


HF_BUILDERS = {"BertModel": hf_bert, "ViTForImageClassification": hf_vit, "GPT2LMHeadModel": hf_gpt2,
               "LlamaForCausalLM": hf_llama}
