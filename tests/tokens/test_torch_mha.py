"""Token merging on nn.TransformerEncoder (nn.MultiheadAttention), batch-first or not, pre/post-norm."""
import pytest
import torch
from torch import nn

import prunekit.tokens as tokens

LENGTHS = [20, 13, 6]


def encoder(batch_first: bool, norm_first: bool) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=batch_first, norm_first=norm_first)
    return nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(32), enable_nested_tensor=not norm_first).eval()


def batch(batch_first: bool):
    src = torch.randn(3, 20, 32)
    pad = torch.ones(3, 20, dtype=torch.bool)
    for b, n in enumerate(LENGTHS):
        pad[b, :n] = False
    return (src if batch_first else src.transpose(0, 1)), pad


@torch.no_grad()
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
def test_r0_equals_unpatched(batch_first, norm_first, module_state):
    enc = encoder(batch_first, norm_first)
    src, pad = batch(batch_first)
    real = ~pad if batch_first else ~pad.T
    dense, dense_nopad, before = enc(src, src_key_padding_mask=pad), enc(src), module_state(enc)
    nested = enc.use_nested_tensor
    tokens.merge(enc, r=0)
    assert ((enc(src, src_key_padding_mask=pad) - dense)[real]).abs().max() <= 1e-5
    assert (enc(src) - dense_nopad).abs().max() <= 1e-5
    tokens.merge(enc, r=3, trace_source=True)
    out = enc(src, src_key_padding_mask=pad)
    info = tokens.last_info(enc)
    assert out.shape == src.shape
    assert info.tokens == [17, 14, 11]
    assert info.size[..., 0].sum(1).tolist() == [float(n) for n in LENGTHS]
    src2 = src.clone()
    src2[~real] = 100.0
    assert torch.equal(enc(src2, src_key_padding_mask=pad)[real], out[real])
    tokens.unpatch(enc)
    assert module_state(enc) == before and enc.use_nested_tensor == nested
    assert torch.equal(enc(src, src_key_padding_mask=pad)[real], dense[real])


def test_attention_mask_is_rejected():
    enc = encoder(True, False)
    tokens.merge(enc, r=2)
    with pytest.raises(NotImplementedError):
        enc(torch.randn(1, 5, 32), mask=torch.zeros(5, 5))
    tokens.unpatch(enc)


def test_nothing_to_patch():
    with pytest.raises(NotImplementedError):
        tokens.merge(nn.Linear(3, 3), r=2)
