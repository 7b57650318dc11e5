"""Saliency-aware video merging (merge_video(method="saliency")) wired into the engine, on the zoo's ViViT."""
import pytest
import torch

import prunekit
import prunekit.tokens as tokens
from prunekit.errors import PruningError
from prunekit.measure import count_macs
from prunekit.tokens.saliency import SaliencyMerge
from prunekit.zoo.models import build


@pytest.fixture
def vivit():
    return build("motion-vivit").eval()   # random weights; 4 x 7 x 7 space-time tokens + class token


@torch.no_grad()
def test_nothing_merged_equals_dense(vivit):
    x = torch.randn(2, 1, 8, 56, 56)
    want = vivit(x)
    tokens.merge_video(vivit, method="saliency", background_r=0, trace_source=True)
    assert (vivit(x) - want).abs().max() <= 1e-5
    assert tokens.last_info(vivit).tokens == [197] * 8


@torch.no_grad()
def test_token_counts_follow_the_schedule(vivit):
    x = torch.randn(2, 1, 8, 56, 56)
    tokens.merge_video(vivit, method="saliency", keep=0.3, early=2, background_r=(90, 20), r=4, trace_source=True)
    vivit(x)
    info = tokens.last_info(vivit)
    assert info.r == [90, 20] + [4] * 6 and info.tokens == [107, 87, 83, 79, 75, 71, 67, 63]
    assert info.size.sum(1).flatten().tolist() == [197.0, 197.0] and info.saliency.shape == (2, 197)
    tokens.merge_video(vivit, method="saliency", target_macs=0.4, example_inputs=(x[:1],))
    assert count_macs(vivit, (x[:1],)) <= 0.4 * count_macs(tokens.unpatch(vivit), (x[:1],))


@torch.no_grad()
def test_salient_tokens_are_never_merged_in_the_early_blocks(vivit):
    x = torch.randn(3, 1, 8, 56, 56)
    tokens.merge_video(vivit, method="saliency", keep=0.3, early=2, background_r=(100, 30), trace_source=True)
    vivit(x)
    info = tokens.last_info(vivit)
    assert info.tokens[-1] == 197 - 130
    salient = info.saliency[:, 1:].topk(59).indices + 1
    final = info.positions.gather(1, salient)                      # the token each ended in
    assert all(len(set(row)) == 59 for row in final.tolist())      # no two in one token
    assert (info.size[..., 0].gather(1, final) == 1).all()         # and none with a background token
    assert (info.positions[:, 0] == 0).all() and (info.size[:, 0] == 1).all()


def _auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Probability that a positive token outscores a negative one (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    diff = pos[:, None] - neg[None]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


@torch.no_grad()
def test_trained_motion_vivit_ranks_the_moving_item_above_the_background():
    """Clips of a garment moving over a still texture: the tokens the garment covers score higher."""
    from prunekit.data import load_fashion_mnist, normalize
    from prunekit.data.motion import make_clip
    from prunekit.zoo import load, read_manifest
    if "motion-vivit" not in read_manifest():
        pytest.skip("no motion-vivit checkpoint shipped")
    model = load("motion-vivit").model
    items = load_fashion_mnist("test")[0][:8]
    clips, masks = [], []
    for i, item in enumerate(items):
        with_item = make_clip(item, torch.Generator().manual_seed(i))
        without = make_clip(torch.zeros_like(item), torch.Generator().manual_seed(i))
        clips.append(with_item)
        masks.append((with_item != without)[0])            # (8, 56, 56) pixels the garment covers
    x = normalize(torch.stack(clips))
    # a token is foreground when the garment covers at least a tenth of its 2 x 8 x 8 tubelet
    fg = torch.stack(masks).view(8, 4, 2, 7, 8, 7, 8).float().mean((2, 4, 6)).flatten(1) >= 0.1
    tokens.merge_video(model, method="saliency", trace_source=True)
    model(x)
    scores = tokens.last_info(model).saliency[:, 1:]
    aucs = [_auc(scores[b], fg[b]) for b in range(8)]
    assert min(aucs) > 0.75 and sum(aucs) / 8 > 0.85
    tokens.unpatch(model)


@torch.no_grad()
def test_unpatch_restores_exactly(vivit, module_state):
    x = torch.randn(2, 1, 8, 56, 56)
    before, dense = module_state(vivit), vivit(x)
    tokens.merge_video(vivit, method="saliency", r=4, trace_source=True)
    assert not torch.equal(vivit(x), dense)
    tokens.unpatch(vivit)
    assert module_state(vivit) == before and torch.equal(vivit(x), dense)


def test_refusals_leave_the_model_as_it_was(vivit, module_state):
    before = module_state(vivit)
    with pytest.raises(PruningError, match="needs 9 blocks, the model has 8"):
        tokens.merge_video(vivit, method="saliency", early=2, layer=7)
    with pytest.raises(ValueError, match="does not take tubes"):
        tokens.merge_video(vivit, 30, method="saliency")
    with pytest.raises(ValueError, match="does not take keep"):
        tokens.merge_video(vivit, 30, keep=0.3)
    with pytest.raises(ValueError, match="needs tubes="):
        tokens.merge_video(vivit)
    with pytest.raises(ValueError, match="method must be one of"):
        tokens.merge_video(vivit, method="flow")
    with pytest.raises(ValueError, match="reducer='merge'"):
        tokens.merge(vivit, saliency=SaliencyMerge(), reducer="drop")
    assert module_state(vivit) == before


@torch.no_grad()
def test_save_and_load_merge_the_same_way(vivit, tmp_path):
    x = torch.randn(2, 1, 8, 56, 56)
    tokens.merge_video(vivit, method="saliency", keep=0.25, early=2, background_r=(80, 10), r=3)
    prunekit.save(vivit, tmp_path / "m.safetensors")
    back = prunekit.load(tmp_path / "m.safetensors").eval()
    assert tokens.is_patched(back) and torch.equal(back(x), vivit(x))
    assert count_macs(back, (x,)) == count_macs(vivit, (x,))


def test_exports_to_onnx(vivit, tmp_path):
    pytest.importorskip("onnxruntime")
    from prunekit.export import export_onnx
    tokens.merge_video(vivit, method="saliency", background_r=90, r=4)
    res = export_onnx(vivit, (torch.randn(2, 1, 8, 56, 56),), tmp_path / "video.onnx")
    assert res["max_abs_diff"] <= res["tolerance"] and res["outputs"] == [[2, 10]]


def test_training_mode_backward(vivit):
    vivit.train()
    tokens.merge_video(vivit, method="saliency", early=2, r=4)
    vivit(torch.randn(2, 1, 8, 56, 56)).sum().backward()
    assert torch.isfinite(vivit.patch_embed.proj.weight.grad).all()
