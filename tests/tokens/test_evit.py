"""EViT (keep the most attended tokens, fuse the rest into one) on the merge engine."""
import copy
import doctest

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import prunekit.tokens as tokens
import prunekit.tokens.prune as prune_module
from prunekit.measure import count_macs
from prunekit.tokens.prune import class_attention, fuse_inattentive, topk_keep

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=5)


def test_docstring_examples_run():
    assert doctest.testmod(prune_module).failed == 0


@pytest.fixture
def vit():
    torch.manual_seed(0)
    return VisionTransformer(**TINY).eval()


@torch.no_grad()
def test_nothing_removed_is_the_dense_model(vit):
    x = torch.randn(2, 3, 32, 32)
    ref = vit(x)
    tokens.evit(vit, r=0)
    assert torch.equal(vit(x), ref)
    tokens.unpatch(vit)
    assert torch.equal(vit(x), ref)


@torch.no_grad()
def test_token_counts_and_macs_match_drop_at_the_same_r(vit):
    x = torch.randn(2, 3, 32, 32)
    counts, macs = {}, {}
    for name, patch in (("evit", tokens.evit), ("drop", tokens.drop), ("tome", tokens.merge)):
        m = patch(copy.deepcopy(vit), r=6, trace_source=True)
        m(x)
        counts[name] = tokens.last_info(m).tokens
        macs[name] = count_macs(m, (x[:1],))
    assert counts["evit"] == counts["drop"] == counts["tome"] == [59, 53, 47, 41]   # 65 - 6 per layer
    # same token counts, same matmul MACs: EViT's fusion adds only O(N C) work per layer
    assert abs(macs["evit"] - macs["drop"]) <= 0.01 * macs["drop"]


def test_fused_token_is_the_attention_weighted_average_with_sizes_summed():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 4, generator=g)
    scores = torch.rand(2, 7, generator=g).softmax(-1)
    size = torch.tensor([1., 2., 1., 3., 1., 1., 0.]).view(1, 7, 1).expand(2, 7, 1)   # the last one is padding
    keep = topk_keep(scores, r=3, num_protected=1)   # keeps the class token and the 3 best of 6
    out, out_size = fuse_inattentive(x, size, scores, keep)
    assert out.shape == (2, 5, 4) and out_size.shape == (2, 5, 1)
    for b in range(2):
        rest = [j for j in range(7) if j not in keep[b].tolist()]
        w = torch.tensor([scores[b, j] if size[b, j, 0] > 0 else 0.0 for j in rest])
        expect = (w[:, None] * x[b, rest]).sum(0) / w.sum()
        assert torch.allclose(out[b, -1], expect, atol=1e-6)
        assert torch.equal(out[b, :-1], x[b, keep[b]])
        assert out_size[b, -1, 0] == size[b, rest, 0].sum()
    assert out_size.sum() == size.sum()   # every real token is counted once


@torch.no_grad()
def test_every_original_token_ends_in_a_token_none_is_lost(vit):
    x = torch.randn(2, 3, 32, 32)
    tokens.evit(vit, r=8, trace_source=True)
    vit(x)
    info = tokens.last_info(vit)
    final = info.tokens[-1]
    assert info.positions.shape == (2, 65) and bool((info.positions >= 0).all())
    assert int(info.positions.max()) == final - 1   # the fused token is the last one
    assert info.size[..., 0].sum(1).tolist() == [65.0, 65.0]


@torch.no_grad()
def test_class_attention_picks_what_the_class_token_attends_to():
    q = torch.zeros(1, 1, 4, 2)
    k = torch.tensor([[[[0., 0.], [9., 0.], [0., 0.], [0., 9.]]]])
    q[..., 0, :] = torch.tensor([1., 1.])
    a = class_attention(q, k)
    assert topk_keep(a, r=1).tolist() == [[0, 1, 3]]


def test_a_fused_model_fine_tunes_gradients_reach_every_block(vit):
    tokens.evit(vit, r=8)
    vit.train()
    loss = vit(torch.randn(2, 3, 32, 32)).logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for n, p in vit.named_parameters() if n.startswith("blocks.") and n.endswith("qkv.weight")]
    assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads)


@torch.no_grad()
def test_padding_of_a_text_encoder_never_enters_the_fused_token():
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                vocab_size=50, attn_implementation="eager")).eval()
    ids = torch.randint(5, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    tokens.evit(bert, r=2, trace_source=True)
    out = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.isfinite(out).all()
    info = tokens.last_info(bert)
    assert info.size[..., 0].sum(1).tolist() == [12.0, 8.0]   # padding stands for no token
