"""Local-then-global merging for dense prediction (merge_dense) on timm ViTs and the zoo's SegViT."""
import doctest

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import prunekit.tokens as tokens
import prunekit.tokens.dense as dense_module
from prunekit.errors import PruningError
from prunekit.measure import count_macs
from prunekit.zoo.models import build

KW = dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=4, num_classes=10)  # 8x8 patches
X = torch.randn(3, 3, 32, 32)


def test_docstring_examples_run():
    assert doctest.testmod(dense_module).failed == 0


def window_constant(vit: VisionTransformer) -> torch.Tensor:
    """Inputs and position embeddings made equal within every 2x2 patch window: identical tokens."""
    with torch.no_grad():
        pos = vit.pos_embed[0, 1:].view(4, 2, 4, 2, -1)
        vit.pos_embed[0, 1:] = pos[:, :1, :, :1].expand_as(pos).reshape(64, -1)
    return X.view(3, 3, 4, 8, 4, 8)[:, :, :, :1, :, :1].expand(3, 3, 4, 8, 4, 8).reshape(3, 3, 32, 32)


@torch.no_grad()
def test_nothing_merged_equals_dense():
    vit = VisionTransformer(**KW).eval()
    want = vit(X)
    tokens.merge_dense(vit, windows=0, r=0)
    assert (vit(X) - want).abs().max() <= 1e-5


@torch.no_grad()
def test_merging_identical_windows_is_lossless():
    vit = VisionTransformer(**KW).eval()
    x = window_constant(vit)
    want, feats = vit(x), vit.forward_features(x)
    tokens.merge_dense(vit, windows=16, r=0, trace_source=True)   # every window: 65 -> 17 tokens
    assert (vit(x) - want).abs().max() <= 1e-5
    assert (vit.forward_features(x) - feats).abs().max() <= 1e-5
    info = tokens.last_info(vit)
    assert info.tokens == [17] * 4 and info.r == [48, 0, 0, 0]
    pos = info.positions[0, 1:].view(4, 2, 4, 2)   # the four patches of a window share one token
    assert (pos == pos[:, :1, :, :1]).all() and pos.unique().numel() == 16


@torch.no_grad()
def test_token_counts_macs_and_restored_shape():
    vit = VisionTransformer(**KW, global_pool="").eval()
    feats = vit.forward_features(X)
    dense_macs = count_macs(vit, (X[:1],))
    tokens.merge_dense(vit, windows=10, r=4, layer=1, trace_source=True)
    out = vit.forward_features(X)
    assert out.shape == feats.shape                       # one token per patch again for the decoder
    info = tokens.last_info(vit)
    assert info.r == [0, 30, 4, 4] and info.tokens == [65, 35, 31, 27]
    assert torch.equal(info.size.sum(1), torch.full((3, 1), 65.))
    assert count_macs(vit, (X[:1],)) < 0.7 * dense_macs
    tokens.unpatch(vit)
    assert torch.equal(vit.forward_features(X), feats)


@torch.no_grad()
def test_target_macs_solves_the_global_r_with_the_local_stage_in_place():
    vit = VisionTransformer(**KW).eval()
    dense_macs = count_macs(vit, (X[:1],))
    tokens.merge_dense(vit, windows=6, target_macs=0.6, example_inputs=(X[:1],))
    r = tokens.schedule_of(vit).r
    assert count_macs(vit, (X[:1],)) <= 0.6 * dense_macs
    tokens.merge_dense(vit, windows=6, r=r - 1)
    assert count_macs(vit, (X[:1],)) > 0.6 * dense_macs   # the smallest r that reaches it


def test_training_mode_backward():
    vit = VisionTransformer(**KW).train()
    tokens.merge_dense(vit, windows=8, r=2)
    vit(X).sum().backward()
    assert vit.patch_embed.proj.weight.grad is not None and torch.isfinite(vit.patch_embed.proj.weight.grad).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(windows=4, window=9), "larger than the token grid.*smaller window"),
    (dict(windows=4, layer=4), "layer=4, but it has 4 blocks"),
    (dict(windows=4, r=[1, 1, 1, 1]), "only 3 blocks follow"),
])
@torch.no_grad()
def test_bad_settings_refused_and_model_unchanged(kwargs, match, module_state):
    vit = VisionTransformer(**KW).eval()
    tokens.merge(vit, r=3)
    before, want = module_state(vit), vit(X)
    with pytest.raises(PruningError, match=match):
        tokens.merge_dense(vit, **kwargs)
    assert module_state(vit) == before and torch.equal(vit(X), want)   # the earlier patch is kept


def test_models_without_a_token_grid_are_refused():
    enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
    with pytest.raises(PruningError, match="TransformerEncoder: cannot merge tokens locally: .*no timm"):
        tokens.merge_dense(enc, windows=2)
    dyn = VisionTransformer(**KW, dynamic_img_size=True)
    with pytest.raises(PruningError, match="grid is not fixed"):
        tokens.merge_dense(dyn, windows=2)
    assert not tokens.is_patched(enc) and not tokens.is_patched(dyn)
    with pytest.raises(ValueError, match="reducer='merge'"):
        tokens.merge(VisionTransformer(**KW), r=2, reducer="drop", local=tokens.LocalMerge(2))


@torch.no_grad()
def test_segvit_restores_one_token_per_patch_for_its_decoder():
    seg = build("mosaic-segvit").eval()
    x = torch.randn(2, 1, 56, 56)
    want = seg(x)
    tokens.merge_dense(seg, windows=0)
    assert (seg(x) - want).abs().max() <= 1e-5
    tokens.merge_dense(seg, windows=20, r=8)
    assert seg(x).shape == want.shape == (2, 11, 56, 56)
    tokens.unpatch(seg)
    assert torch.equal(seg(x), want)
