"""The pure core of saliency-aware merging (prunekit.tokens.saliency): the score on constructed attention
maps, the salient order, the background matching and the per-layer plan."""
import doctest
import math

import pytest
import torch

import prunekit.tokens as tokens
import prunekit.tokens.saliency as saliency_module
from prunekit.tokens.saliency import (
    SaliencyMerge,
    attention_probs,
    attention_saliency,
    background_matching,
    saliency_from_qk,
    salient_order,
    sharpness,
)
from prunekit.tokens.schedule import Constant


def test_docstring_examples_run():
    assert doctest.testmod(saliency_module).failed == 0


def test_saliency_of_a_constructed_attention_map():
    """Two of five queries look at token 3 only, the other three everywhere alike (head 0); head 1 is uniform."""
    attn = torch.full((1, 2, 5, 5), 0.2)
    attn[0, 0, :2] = torch.tensor([0., 0., 0., 1., 0.])
    assert sharpness(attn)[0, 0].tolist() == pytest.approx([math.log(5)] * 2 + [0.0] * 3, abs=1e-6)
    # token 3: (1/5) * 2 * log 5 in head 0, nothing in head 1; every other token gets nothing
    assert attention_saliency(attn)[0].tolist() == pytest.approx([0, 0, 0, math.log(5) / 5, 0], abs=1e-6)
    # attention a token gets from diffuse queries counts for nothing, from sharp ones for much
    attn = torch.full((1, 1, 4, 4), 0.25)
    attn[0, 0, 0] = torch.tensor([0.7, 0.1, 0.1, 0.1])     # query 0: fairly sharp, mostly on token 0
    s = attention_saliency(attn)[0]
    assert int(s.argmax()) == 0 and s[1] == s[2] == s[3] and s[0] > 3 * s[1]


def test_fast_saliency_equals_the_reference_with_a_bias_and_strides():
    q, k = torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8)
    bias = torch.randn(2, 1, 1, 9)
    want = attention_saliency(attention_probs(q, k, bias))
    assert torch.allclose(saliency_from_qk(q, k, bias), want, atol=1e-6)
    # a stride averages over every 3rd query (3 of 9): the reference on those rows, divided by 3, not 9
    sub = attention_saliency(attention_probs(q[:, :, ::3], k, bias)) * 9 / 3
    assert torch.allclose(saliency_from_qk(q, k, bias, query_stride=3), sub, atol=1e-6)


def test_salient_order_and_background_matching_keep_the_salient_tokens_apart():
    torch.manual_seed(0)
    metric = torch.randn(2, 21, 8)
    scores = torch.randn(2, 21)
    order = salient_order(scores, count=5, num_protected=1)
    top = scores[:, 1:].topk(5).indices + 1
    assert (order[:, 0] == 0).all()
    assert [sorted(o) for o in order[:, 1:6].tolist()] == [sorted(t) for t in top.tolist()]
    m = background_matching(metric, 12, kept=5, num_protected=1, scores=scores)   # 15 background: 2 rounds
    assert m.r == 12
    x, size = tokens.merge_wavg(m, torch.randn(2, 21, 4))
    assert x.shape == (2, 9, 4) and size.sum(1).flatten().tolist() == [21.0, 21.0]
    assert (size[:, :6] == 1).all()                               # the class token and the 5 salient alone
    positions = tokens.merge_positions(m, None, 21, 2)
    for b in range(2):
        assert positions[b, top[b]].sort().values.tolist() == [1, 2, 3, 4, 5]
    assert background_matching(metric, 99, kept=5, num_protected=1, scores=scores).r == 14   # one left


def test_plan_and_its_checks():
    stage = SaliencyMerge(keep=0.3, background_r=(90, 20), early=2)
    assert stage.kept(197, 1) == 59
    assert stage.plan(Constant(4), 8, 197, 1) == [90, 20, 4, 4, 4, 4, 4, 4]
    assert SaliencyMerge(keep=0.3, early=2).plan(Constant(0), 8, 197, 1) == [100, 27, 0, 0, 0, 0, 0, 0]   # 0.73 each
    assert SaliencyMerge().kept(197, 1) == 59 and SaliencyMerge().plan(Constant(0), 2, 197, 1) == [100, 0]
    assert SaliencyMerge(background_r=0, early=2).plan(Constant(4), 4, 197, 1) == [0, 0, 4, 4]   # stage off
    assert SaliencyMerge(background_r=500).plan(Constant(0), 2, 197, 1) == [136, 0]   # all but one background
    for bad in (dict(keep=1.0), dict(early=0), dict(layer=-1), dict(background_r=(3, 4)), dict(query_stride=0)):
        with pytest.raises(ValueError):
            SaliencyMerge(**bad)
    with pytest.raises(ValueError, match="needs 9 blocks"):
        SaliencyMerge(early=2, layer=7).check(8, Constant(0))
