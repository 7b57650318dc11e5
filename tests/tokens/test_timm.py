"""Token merging on timm VisionTransformer and its relatives: exactness at r=0, schedules, sizes, unpatch."""
import pytest
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import ResPostBlock, VisionTransformer

import prunekit.tokens as tokens
from prunekit.measure import count_macs

KW = dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=4, num_classes=10)  # 64 patches
VARIANTS = {
    "vit": lambda: VisionTransformer(**KW),
    "deit-distilled": lambda: VisionTransformerDistilled(**KW),
    "layerscale": lambda: VisionTransformer(init_values=0.1, **KW),           # DeiT-III / DINOv2
    "qk-norm": lambda: VisionTransformer(qk_norm=True, **KW),
    "registers": lambda: VisionTransformer(reg_tokens=4, class_token=True, **KW),
    "avg-pool": lambda: VisionTransformer(global_pool="avg", **KW),
    "clip-pre-norm": lambda: VisionTransformer(pre_norm=True, **KW),
    "attn-pool": lambda: VisionTransformer(global_pool="map", **KW),
    "no-class-token": lambda: VisionTransformer(class_token=False, global_pool="avg", **KW),
}


@pytest.fixture(params=sorted(VARIANTS))
def vit(request):
    model = VARIANTS[request.param]().eval()
    if request.param == "layerscale":  # make LayerScale matter: a skipped ls1/ls2 would show
        for blk in model.blocks:
            blk.ls1.gamma.data.uniform_(0.1, 2.0)
            blk.ls2.gamma.data.uniform_(0.1, 2.0)
    return model


X = torch.randn(3, 3, 32, 32)


@torch.no_grad()
def test_r0_equals_unpatched(vit):
    dense, feats = vit(X), vit.forward_features(X)
    tokens.merge(vit, r=0)
    assert (vit(X) - dense).abs().max() <= 1e-5
    assert (vit.forward_features(X) - feats).abs().max() <= 1e-5


@torch.no_grad()
def test_unpatch_restores_exactly_and_merge_works_again(vit, module_state):
    dense, before = vit(X), module_state(vit)
    tokens.merge(vit, r=6, trace_source=True)
    merged = vit(X)
    assert not torch.allclose(merged, dense)
    assert tokens.is_patched(vit)
    tokens.unpatch(vit)
    assert module_state(vit) == before and not tokens.is_patched(vit)
    assert torch.equal(vit(X), dense)
    tokens.merge(vit, r=6)
    assert torch.allclose(vit(X), merged, atol=1e-6)
    tokens.unpatch(vit)


@torch.no_grad()
@pytest.mark.parametrize("r", [4, [10, 0, 6, 3], tokens.decreasing(5), tokens.Linear(2, 9)])
def test_token_counts_follow_schedule_and_sizes_sum(vit, r):
    p = vit.num_prefix_tokens
    n0 = 64 + p
    expected_r = tokens.PerLayer(r).per_layer(4, n0, p) if isinstance(r, list) else \
        (r if hasattr(r, "per_layer") else tokens.Constant(r)).per_layer(4, n0, p)
    seen = []
    hooks = [blk.mlp.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1])) for blk in vit.blocks]
    tokens.merge(vit, r=r, trace_source=True)
    out = vit.forward_features(X)
    for h in hooks:
        h.remove()
    info = tokens.last_info(vit)
    assert seen == tokens.token_counts(expected_r, n0) == info.tokens
    assert info.r == expected_r
    assert out.shape == (3, n0, 48)                                       # restored to one token per patch
    assert torch.equal(info.size[:, p:].sum(1).flatten(), torch.full((3,), 64.0))   # patch tokens
    assert torch.equal(info.size[:, :p], torch.ones(3, p, 1))            # prefix never merged
    assert torch.equal(info.positions[:, :p], torch.arange(p).expand(3, p))
    counts = torch.stack([torch.bincount(info.positions[b], minlength=info.size.shape[1]) for b in range(3)])
    assert torch.equal(counts.float(), info.size[..., 0])
    tokens.unpatch(vit)


@torch.no_grad()
def test_avg_pool_is_size_weighted():
    vit = VARIANTS["avg-pool"]().eval()
    tokens.merge(vit, r=8, trace_source=True)
    feats = vit.forward_features(X)
    info = tokens.last_info(vit)
    # the merged tokens: any original position of each final token holds its value
    first = torch.stack([torch.stack([(info.positions[b] == i).nonzero()[0, 0] for i in range(info.size.shape[1])])
                         for b in range(3)])
    merged = feats.gather(1, first[..., None].expand(-1, -1, 48))
    s = info.size
    weighted = (merged[:, 1:] * s[:, 1:]).sum(1) / s[:, 1:].sum(1)
    assert torch.allclose(vit.forward_head(feats, pre_logits=True), vit.fc_norm(weighted), atol=1e-5)
    assert not torch.allclose(weighted, merged[:, 1:].mean(1), atol=1e-4)  # plain mean would differ
    tokens.unpatch(vit)


@torch.no_grad()
def test_layerscale_is_applied():
    vit = VARIANTS["layerscale"]().eval()
    dense = vit(X)
    tokens.merge(vit, r=0)
    assert (vit(X) - dense).abs().max() <= 1e-5
    for blk in vit.blocks:
        blk.ls1.gamma.data.zero_()
        blk.ls2.gamma.data.zero_()
    # with every residual branch scaled to 0 only the embeddings remain: proves ls1/ls2 are used
    assert torch.allclose(vit(X), vit.forward_head(vit.norm(vit._pos_embed(vit.patch_embed(X)))), atol=1e-5)
    tokens.unpatch(vit)


def test_prop_attn_changes_outputs():
    vit = VARIANTS["vit"]().eval()
    with torch.no_grad():
        a = tokens.merge(vit, r=8)(X)
        b = tokens.merge(vit, r=8, prop_attn=False)(X)
    assert not torch.allclose(a, b)
    tokens.unpatch(vit)


def test_target_macs_solves_r():
    vit = VARIANTS["vit"]().eval()
    x1 = X[:1]
    dense = count_macs(vit, (x1,))
    tokens.merge(vit, target_macs=0.6, example_inputs=(x1,))
    r = tokens.schedule_of(vit).r
    assert count_macs(vit, (x1,)) <= 0.6 * dense
    tokens.merge(vit, r=r - 1)
    assert count_macs(vit, (x1,)) > 0.6 * dense
    tokens.unpatch(vit)
    with pytest.raises(ValueError):
        tokens.merge(vit, target_macs=0.6)
    assert not tokens.is_patched(vit)


def test_unsupported_blocks_raise_before_changing_anything(module_state):
    vit = VisionTransformer(block_fn=ResPostBlock, **KW).eval()
    before = module_state(vit)
    with pytest.raises(NotImplementedError, match="ResPostBlock"):
        tokens.merge(vit, r=4)
    assert module_state(vit) == before


def test_drop_reference_keeps_top_class_attention():
    vit = VARIANTS["vit"]().eval()
    tokens.drop(vit, r=5, trace_source=True)
    with torch.no_grad():
        out = vit.forward_features(X)
    info = tokens.last_info(vit)
    assert out.shape == (3, 65 - 20, 48) and info.tokens == [60, 55, 50, 45]
    assert (info.positions >= 0).sum(1).tolist() == [45] * 3 and info.positions[:, 0].tolist() == [0] * 3
    tokens.unpatch(vit)
    assert not tokens.is_patched(vit)


def test_training_mode_backward():
    vit = VisionTransformer(drop_path_rate=0.1, **KW).train()
    tokens.merge(vit, r=4)
    vit(X).sum().backward()
    assert vit.blocks[0].attn.qkv.weight.grad is not None
    tokens.unpatch(vit)


def test_pickle_roundtrip_while_patched(tmp_path):
    vit = VARIANTS["vit"]().eval()
    tokens.merge(vit, r=4)
    torch.save(vit, tmp_path / "m.pt")
    again = torch.load(tmp_path / "m.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(again(X), vit(X))
