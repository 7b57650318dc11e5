"""Token merging inside attention windows: timm Swin (v1) and SAM-style windowed ViTs."""
import doctest

import pytest
import timm
import torch

import prunekit.tokens as tokens
import prunekit.tokens.windowed as windowed
from prunekit.errors import PruningError
from prunekit.measure import count_macs
from prunekit.tokens.matching import bipartite_soft_matching


def swin(img: int = 112) -> torch.nn.Module:
    """Two stages (the second after patch merging), shifted windows of 7x7 in every second block."""
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=img, depths=(2, 2), num_heads=(3, 6),
                             embed_dim=48, num_classes=10).eval()


def sam(window: int = 3, img: int = 128) -> torch.nn.Module:
    """8x8 patch grid; 3x3 windows (the grid is padded to 9x9) in blocks 0 and 2, global attention in 1 and 3."""
    torch.manual_seed(0)
    m = timm.create_model("samvit_base_patch16", img_size=img, depth=4, embed_dim=96, num_heads=3,
                          window_size=window, global_attn_indexes=(1, 3), use_rel_pos=True, num_classes=0,
                          global_pool=None).eval()
    with torch.no_grad():   # relative position tables start at zero: give them values so they matter
        for name, p in m.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.5)
    return m


X_SWIN = torch.randn(2, 3, 112, 112)
X_SAM = torch.randn(2, 3, 128, 128)
FAMILIES = [(swin, X_SWIN), (sam, X_SAM)]


def test_docstring_examples_run():
    assert doctest.testmod(windowed).failed == 0


@pytest.mark.parametrize("build,x", FAMILIES, ids=["swin", "sam"])
@torch.no_grad()
def test_r0_is_the_dense_model_and_unpatch_restores_it_exactly(build, x):
    model = build()
    dense = model(x)
    classes = [type(m) for m in model.modules()]
    attrs = [set(m.__dict__) for m in model.modules()]
    tokens.merge(model, r=0)
    assert tokens.is_patched(model)
    assert (model(x) - dense).abs().max() < 1e-5
    tokens.unpatch(model)
    assert not tokens.is_patched(model)
    assert [type(m) for m in model.modules()] == classes
    assert [set(m.__dict__) for m in model.modules()] == attrs
    assert torch.equal(model(x), dense)


@pytest.mark.parametrize("build,x,r", [(swin, X_SWIN, 12), (sam, X_SAM, 3)], ids=["swin", "sam"])
@torch.no_grad()
def test_merging_keeps_the_grid_and_cuts_macs(build, x, r):
    model = build()
    feats, macs = model.forward_features(x), count_macs(model, (x[:1],))
    tokens.merge(model, r=r, trace_source=True)
    merged = model.forward_features(x)
    assert tokens.last_info(model) is None      # each block un-merges its windows: no token map to keep
    assert merged.shape == feats.shape            # the grid is restored after every block
    assert torch.isfinite(merged).all()
    assert count_macs(model, (x[:1],)) < 0.9 * macs
    # merged tokens stay close to the dense ones: merging the most alike pairs, not scrambling
    cos = torch.nn.functional.cosine_similarity(merged.flatten(1), feats.flatten(1))
    assert cos.min() > 0.5


def test_swin_grid_padding_and_shift_regions():
    """A 30x30 grid is padded to 35x35 for 7x7 windows; the shifted block's corner windows hold 4 regions."""
    model = swin(img=120)
    x = torch.randn(2, 3, 120, 120)
    with torch.no_grad():
        dense = model(x)
        assert (tokens.merge(model, r=0)(x) - dense).abs().max() < 1e-5
        out = tokens.merge(model, r=20)(x)
    assert out.shape == dense.shape and torch.isfinite(out).all()


def test_gradients_reach_every_parameter_through_the_merged_blocks():
    model = swin().train()
    tokens.merge(model, r=10)
    model(X_SWIN).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_regions_are_never_mixed_while_a_same_region_pair_remains():
    # A = tokens 0, 2, 4; B = 1, 3, 5. Tokens 0-2 are identical but 0 and 2 lie in another region than 1;
    # 4 and 5 share a region and are only fairly alike (cosine 0.71).
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0], [1.0, 1.0]]])
    regions = torch.tensor([[0, 1, 0, 1, 2, 2]])
    values = torch.arange(6.0).view(1, 6, 1)
    with_regions = bipartite_soft_matching(metric, r=1, regions=regions).merge(values, "sum").flatten().tolist()
    assert 9.0 in with_regions                                   # 4 + 5, the same-region pair
    plain = bipartite_soft_matching(metric, r=1).merge(values, "sum").flatten().tolist()
    assert 9.0 not in plain and (1.0 in plain or 3.0 in plain)   # without regions: 0 or 2 into 1


def test_target_macs_picks_the_smallest_r_reaching_it():
    model = swin()
    dense = count_macs(model, (X_SWIN[:1],))
    tokens.merge(model, target_macs=0.85, example_inputs=(X_SWIN[:1],))
    r = tokens.schedule_of(model).values
    assert len(set(r)) == 1 and r[0] > 0
    assert count_macs(model, (X_SWIN[:1],)) <= 0.85 * dense
    tokens.merge(model, r=r[0] - 1)
    assert count_macs(model, (X_SWIN[:1],)) > 0.85 * dense


@pytest.mark.parametrize("kwargs,needle", [
    (dict(r=2, reducer="drop"), "reducer"),
    (dict(r=[1, 2]), "4 windowed blocks"),
    (dict(r=-1), "r must be"),
])
def test_unsupported_options_are_refused_and_the_model_is_unchanged(kwargs, needle):
    model = swin()
    tokens.merge(model, r=3)
    before = tokens.schedule_of(model)
    with pytest.raises(PruningError, match=needle):
        tokens.merge(model, **kwargs)
    assert tokens.schedule_of(model) == before   # a refused call keeps the old patch


@pytest.mark.parametrize("build,x", FAMILIES, ids=["swin", "sam"])
@torch.no_grad()
def test_merge_dense_in_windows_merges_nothing_at_zero_and_cuts_macs_with_local_groups(build, x):
    model = build()
    dense, macs = model(x), count_macs(model, (x[:1],))
    assert (tokens.merge_dense(model, windows=0, r=0)(x) - dense).abs().max() < 1e-5
    local_only = count_macs(tokens.merge_dense(model, windows=2, r=0), (x[:1],))
    both = count_macs(tokens.merge_dense(model, windows=2, r=1), (x[:1],))
    assert both < local_only < macs
    out = model(x)
    assert out.shape == dense.shape and torch.isfinite(out).all()
    tokens.unpatch(model)
    assert torch.equal(model(x), dense)


def test_local_groups_are_whole_aligned_2x2_neighbourhoods_then_pairs():
    t = torch.randn(3, 36, 16)
    m = windowed.window_matching(t, (6, 6), r=0, local=4)
    assert m.r == 12
    slot = m.unmerge(m.merge(torch.arange(36.0).view(1, 36, 1).expand(3, -1, -1), "amax"))[..., 0]
    for b in range(3):
        grid = slot[b].view(6, 6)
        merged = [v for v in grid.unique() if (grid == v).sum() > 1]
        assert len(merged) == 4
        for v in merged:
            rows, cols = torch.nonzero(grid == v, as_tuple=True)
            assert len(rows) == 4 and rows.min() % 2 == 0 and cols.min() % 2 == 0
            assert rows.max() - rows.min() == 1 and cols.max() - cols.min() == 1
    assert windowed.window_matching(t, (6, 6), r=3, local=4).r == 15   # then 3 pairs among the 24 left


def test_local_groups_never_mix_shift_regions_or_padding_while_another_group_remains():
    # 4x4 window, groups {0,1,4,5} {2,3,6,7} {8,9,12,13} {10,11,14,15}: the first is all alike but spans two
    # regions, the third holds padding; the fourth is fairly alike and whole
    t = torch.randn(1, 16, 8)
    t[0, [0, 1, 4, 5]] = t[0, 0].clone()
    t[0, [8, 9, 12, 13]] = t[0, 8].clone()
    t[0, [10, 11, 14, 15]] = t[0, 10] + 0.3 * torch.randn(4, 8)
    regions = torch.zeros(1, 16, dtype=torch.long)
    regions[0, [1, 5]] = 1
    valid = torch.ones(1, 16, dtype=torch.bool)
    valid[0, 13] = False
    m = windowed.window_matching(t, (4, 4), r=0, local=1, valid=valid, regions=regions)
    slot = m.unmerge(m.merge(torch.arange(16.0).view(1, 16, 1), "amax"))[0, :, 0]
    assert slot[10] == slot[11] == slot[14] == slot[15] and len(slot.unique()) == 13
    plain = windowed.window_matching(t, (4, 4), r=0, local=1)
    assert len(plain.unmerge(plain.merge(torch.arange(16.0).view(1, 16, 1), "amax"))[0, :, 0][[0, 1, 4, 5]]
               .unique()) == 1


@torch.no_grad()
def test_merging_duplicate_neighbours_in_windows_is_exact_with_proportional_attention():
    # SAM without relative position bias (which differs per position), 4x4 windows and global blocks on an
    # 8x8 grid: each 32 px tile is one colour and the position embedding repeats over each 2x2 patch block,
    # so every 2x2 group holds four equal tokens in every block; collapsing all of them changes nothing
    torch.manual_seed(0)
    model = timm.create_model("samvit_base_patch16", img_size=128, depth=4, embed_dim=96, num_heads=3,
                              window_size=4, global_attn_indexes=(1, 3), use_rel_pos=False, num_classes=0,
                              global_pool=None).eval()
    pe = model.pos_embed
    pe.copy_(pe[:, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2))
    x = torch.randn(2, 3, 4, 4).repeat_interleave(32, 2).repeat_interleave(32, 3)
    dense = model(x)
    tokens.merge_dense(model, windows=4, r=0)    # all 4 groups of every 16-token window, 16 of the global 64
    out = model(x)
    assert (out - dense).abs().max() <= 1e-4 * dense.abs().max()
    # the blocks run on a quarter of the tokens; the patch embedding and the conv neck stay whole
    assert count_macs(model, (x[:1],)) < 0.75 * count_macs(tokens.unpatch(model), (x[:1],))


def test_local_stage_refusals_name_the_fix_and_keep_the_model():
    model = swin()
    tokens.merge(model, r=3)
    before = tokens.schedule_of(model)
    for kwargs, needle in [(dict(threshold=0.5), "threshold=None"), (dict(layer=4), "past the last"),
                           (dict(window=8), "smaller than the local window")]:
        with pytest.raises(PruningError, match=needle):
            tokens.merge_dense(model, windows=2, r=1, **kwargs)
        assert tokens.schedule_of(model) == before


def test_merge_dense_in_windows_layer_leaves_the_blocks_before_it_whole_and_reaches_target_macs():
    model = swin()
    tokens.merge_dense(model, windows=3, r=2, layer=2)
    cfgs = [m.__dict__[windowed.KEY] for m in model.modules() if windowed.KEY in m.__dict__]
    assert [(c.r, c.local) for c in cfgs] == [(0, 0), (0, 0), (2, 3), (2, 3)]
    dense = count_macs(tokens.unpatch(model), (X_SWIN[:1],))
    tokens.merge_dense(model, windows=3, target_macs=0.6, example_inputs=(X_SWIN[:1],))
    assert count_macs(model, (X_SWIN[:1],)) <= 0.6 * dense


def test_rotary_windows_and_swin_v2_are_refused_by_name():
    rope = timm.create_model("samvit_base_patch16", img_size=64, depth=2, embed_dim=48, num_heads=2, window_size=2,
                             global_attn_indexes=(1,), use_rel_pos=False, use_rope=True, num_classes=0,
                             global_pool=None)
    with pytest.raises(NotImplementedError, match="rotary position embedding"):
        tokens.merge(rope, r=1)
    v2 = timm.create_model("swinv2_tiny_window8_256", img_size=64, depths=(2,), num_heads=(2,), embed_dim=32,
                           window_size=4, num_classes=0)
    with pytest.raises(NotImplementedError, match="SwinTransformerV2Block"):
        tokens.merge(v2, r=1)
    assert not tokens.is_patched(rope) and not tokens.is_patched(v2)


@pytest.mark.parametrize("build,x,local", [(swin, X_SWIN, 0), (sam, X_SAM, 0), (swin, X_SWIN, 3)],
                         ids=["swin", "sam", "swin-local"])
def test_a_saved_merged_model_loads_merging_the_same_way(build, x, local, tmp_path):
    import prunekit
    model = build()
    tokens.merge_dense(model, windows=local, r=2) if local else tokens.merge(model, r=2)
    with torch.no_grad():
        want = model(x)
    prunekit.save(model, tmp_path / "m.safetensors")
    back = prunekit.load(tmp_path / "m.safetensors").eval()
    assert tokens.schedule_of(back) == tokens.schedule_of(model)
    with torch.no_grad():
        assert torch.equal(back(x), want)
    tokens.unpatch(back)
    assert not tokens.is_patched(back)


@pytest.mark.parametrize("build,x", FAMILIES, ids=["swin", "sam"])
def test_a_window_merged_model_exports_to_onnx_and_matches_in_onnxruntime(build, x, tmp_path):
    pytest.importorskip("onnxruntime")
    import prunekit
    model = build()
    tokens.merge_dense(model, windows=1, r=3)   # the local stage and the pairs after it
    result = prunekit.export_onnx(model, (x,), tmp_path / "m.onnx")
    assert result["max_abs_diff"] < 1e-4 and (tmp_path / "m.onnx").stat().st_size > 0
