"""Keep ``save_pretrained`` honest after pruning a Hugging Face model.

``model.save_pretrained(dir)`` writes the config and the weights; ``from_pretrained(dir)`` builds a
fresh model from the config and loads the weights into it. That round trip works after pruning
exactly when the pruned config (which :func:`~prunekit.structured.heads.sync_hf_config` and
``drop_layers`` keep up to date: ``num_attention_heads``, ``head_dim``, ``num_key_value_heads``,
``intermediate_size``, ``num_hidden_layers``) rebuilds every tensor at its pruned shape. Where it
cannot (heads removed from a BERT, whose head width is ``hidden_size / num_attention_heads``;
layers pruned to different widths), :func:`guard_save_pretrained` replaces the instance's
``save_pretrained`` with a :class:`RefusedSave` that raises a :class:`~prunekit.PruningError`
naming the first tensor and pointing to ``prunekit.save``, instead of writing a directory that
``from_pretrained`` rejects with size mismatches. The class itself is never changed.

>>> from transformers import BertConfig, BertModel
>>> bert = BertModel(BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
...                             num_hidden_layers=1, vocab_size=50)).eval()
>>> config_mismatch(bert) is None
True
>>> bert.encoder.layer[0].intermediate.dense = __import__("torch").nn.Linear(32, 48)
>>> config_mismatch(bert)
'encoder.layer.0.intermediate.dense.weight: pruned (48, 32), the config builds (64, 32)'
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from prunekit.errors import PruningError

__all__ = ["config_mismatch", "guard_save_pretrained", "RefusedSave"]


def _is_pretrained(model: nn.Module) -> bool:
    return hasattr(model, "save_pretrained") and hasattr(getattr(model, "config", None), "to_dict") \
        and hasattr(type(model), "_from_config")


def config_mismatch(model: nn.Module) -> str | None:
    """The first tensor whose shape ``type(model)(model.config)`` does not rebuild, or ``None`` when the
    config describes the model exactly (built on the meta device: no memory, no weights)."""
    try:
        with torch.device("meta"):
            fresh = type(model)._from_config(copy.deepcopy(model.config))
    except Exception as e:  # noqa: BLE001 - a config transformers cannot build is a mismatch too
        return f"the config does not build ({type(e).__name__}: {e})"
    ref = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, shape in ours.items():
        if k not in ref:
            return f"{k}: pruned model has it, the config builds no such tensor"
        if ref[k] != shape:
            return f"{k}: pruned {shape}, the config builds {ref[k]}"
    extra = sorted(set(ref) - set(ours))
    return f"{extra[0]}: the config builds it, the pruned model has none" if extra else None


class RefusedSave:
    """Stands in for ``save_pretrained`` on a pruned model whose config cannot rebuild it."""

    def __init__(self, reason: str):
        self.reason = reason

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise PruningError("save_pretrained", "save a pruned Hugging Face model",
                           f"from_pretrained could not rebuild it from its config ({self.reason}); "
                           "save it with prunekit.save(model, 'model.safetensors') and open it with prunekit.load")


def guard_save_pretrained(model: nn.Module) -> str | None:
    """After pruning: refuse ``model.save_pretrained`` (instance only) where the config cannot rebuild the
    model, and lift an earlier refusal where it now can. Returns the reason, or ``None``."""
    if not _is_pretrained(model):
        return None
    reason = config_mismatch(model)
    if reason is None:
        model.__dict__.pop("save_pretrained", None)
    else:
        model.__dict__["save_pretrained"] = RefusedSave(reason)
    return reason
