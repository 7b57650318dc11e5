"""Token merging on Hugging Face encoders: BERT with padding masks, ViT and DeiT (small configs, no downloads)."""
import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

import prunekit.tokens as tokens

BERT = BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=96)
VIT = dict(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
           intermediate_size=96)


def padded_batch():
    ids = torch.randint(5, 120, (4, 24))
    mask = torch.ones(4, 24, dtype=torch.long)
    for row, length in enumerate([24, 17, 9, 4]):
        mask[row, length:] = 0
        ids[row, length:] = 0
    return ids, mask


def mean_pool(hidden, mask):
    m = mask[..., None].float()
    return (hidden * m).sum(1) / m.sum(1)


@pytest.fixture
def bert():
    return BertModel(BERT).eval()


@torch.no_grad()
def test_bert_r0_equals_unpatched(bert):
    ids, mask = padded_batch()
    dense = bert(input_ids=ids, attention_mask=mask)
    tokens.merge(bert, r=0)
    out = bert(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    assert (out.last_hidden_state - dense.last_hidden_state)[real].abs().max() <= 1e-5
    assert (out.pooler_output - dense.pooler_output).abs().max() <= 1e-5
    assert (mean_pool(out.last_hidden_state, mask) - mean_pool(dense.last_hidden_state, mask)).abs().max() <= 1e-5


@torch.no_grad()
def test_bert_without_padding_r0(bert):
    ids = torch.randint(5, 120, (2, 16))
    dense = bert(input_ids=ids).last_hidden_state
    tokens.merge(bert, r=0)
    assert (bert(input_ids=ids).last_hidden_state - dense).abs().max() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("r", [2, 4, 7])
def test_bert_padding_never_merged_into_real_tokens(bert, r):
    ids, mask = padded_batch()
    tokens.merge(bert, r=r, trace_source=True)
    out = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    info = tokens.last_info(bert)
    assert out.shape == (4, 24, 48)                        # restored to the padded length
    assert info.tokens == tokens.token_counts(tokens.Constant(r).per_layer(3, 24, 1), 24)
    # sizes count real tokens only, per sentence
    assert info.size[..., 0].sum(1).tolist() == [24.0, 17.0, 9.0, 4.0]
    # what padding holds does not reach any real token
    ids2 = ids.clone()
    ids2[mask == 0] = 77
    out2 = bert(input_ids=ids2, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert torch.equal(out[real], out2[real])
    # while a sentence still has padding to pair, no merged token mixes real and padding
    for b, length in enumerate([24, 17, 9, 4]):
        n_pad = 24 - length
        if 3 * r <= n_pad // 2:
            pos = info.positions[b]
            for tok in pos.unique():
                members = real[b][pos == tok]
                assert members.all() or not members.any()
    tokens.unpatch(bert)


@torch.no_grad()
def test_bert_mean_pooling_is_size_weighted_and_mask_aware(bert):
    ids, mask = padded_batch()
    tokens.merge(bert, r=5, trace_source=True)
    hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    info = tokens.last_info(bert)
    for b in range(4):
        pos, size = info.positions[b], info.size[b, :, 0]
        merged = torch.stack([hidden[b][(pos == i).nonzero()[0, 0]] for i in range(size.shape[0])])
        weighted = (merged * size[:, None]).sum(0) / size.sum()
        assert torch.allclose(mean_pool(hidden[b:b + 1], mask[b:b + 1])[0], weighted, atol=1e-5)
    tokens.unpatch(bert)


@torch.no_grad()
def test_bert_unpatch_exact(bert, module_state):
    ids, mask = padded_batch()
    dense, before = bert(input_ids=ids, attention_mask=mask).last_hidden_state, module_state(bert)
    tokens.merge(bert, r=4, trace_source=True)
    bert(input_ids=ids, attention_mask=mask)
    tokens.unpatch(bert)
    assert module_state(bert) == before
    assert torch.equal(bert(input_ids=ids, attention_mask=mask).last_hidden_state, dense)
    assert [type(m).__name__ for m in bert.encoder.layer] == ["BertLayer"] * 3


@torch.no_grad()
@pytest.mark.parametrize("cls,config,prefix", [
    (ViTModel, ViTConfig, 1), (ViTForImageClassification, ViTConfig, 1),
    (DeiTModel, DeiTConfig, 2), (DeiTForImageClassification, DeiTConfig, 2)])
def test_hf_vision_r0_and_counts(cls, config, prefix, module_state):
    model = cls(config(**VIT, num_labels=5)).eval()
    x = torch.randn(2, 3, 32, 32)
    out = lambda o: o.logits if hasattr(o, "logits") else o.last_hidden_state
    dense, before = out(model(pixel_values=x)), module_state(model)
    tokens.merge(model, r=0)
    assert (out(model(pixel_values=x)) - dense).abs().max() <= 1e-5
    tokens.merge(model, r=8, trace_source=True)
    merged = out(model(pixel_values=x))
    info = tokens.last_info(model)
    assert info.num_protected == prefix
    assert info.tokens == tokens.token_counts([8] * 3, 64 + prefix)
    assert merged.shape == dense.shape and not torch.allclose(merged, dense)
    assert torch.equal(info.size[:, prefix:].sum(1).flatten(), torch.full((2,), 64.0))
    tokens.unpatch(model)
    assert module_state(model) == before
    assert torch.equal(out(model(pixel_values=x)), dense)
