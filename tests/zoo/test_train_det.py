"""mosaic-det's start from mosaic-segvit's encoder, its refusal of other starts, and its continuation stage."""
import pytest
import torch
import torch.nn.functional as F

from prunekit.zoo.detvit import build_detvit
from prunekit.zoo.store import load_state
from prunekit.zoo.train_det import START, more_det, recipe_det, segvit_encoder


def _patchwise_upsample(x: torch.Tensor, patch: int, factor: int) -> torch.Tensor:
    """Each ``patch`` x ``patch`` patch of ``x`` resized on its own (bicubic, antialiased, as timm's
    ``resample_patch_embed`` resizes kernels) to ``patch * factor`` px, tiled back together."""
    b, c, h, w = x.shape
    p = x.unfold(2, patch, patch).unfold(3, patch, patch)              # b c gh gw p p
    gh, gw = p.shape[2], p.shape[3]
    big = F.interpolate(p.reshape(-1, 1, patch, patch), size=patch * factor, mode="bicubic", antialias=True)
    big = big.reshape(b, c, gh, gw, patch * factor, patch * factor)
    return big.permute(0, 1, 2, 4, 3, 5).reshape(b, c, gh * patch * factor, gw * patch * factor)


def test_segvit_encoder_loads_every_encoder_tensor_and_resamples_the_patch_embedding():
    """Every encoder tensor but the patch kernel is mosaic-segvit's exactly; the 8 px kernel on each 4 px
    patch resized to 8 px gives segvit's 4 px patch token (FlexiViT's pseudo-inverse resize is exact
    for upsampling), so the encoder sees the 112 px canvas as segvit saw the 56 px one."""
    seg = {k.removeprefix("encoder."): v for k, v in load_state(START).items() if k.startswith("encoder.")}
    det = build_detvit()
    neck = {k: v.clone() for k, v in det.neck.state_dict().items()}
    sha = segvit_encoder(det)
    assert len(sha) == 64
    state = det.encoder.state_dict()
    assert set(state) == set(seg)
    for k, v in state.items():
        if k != "patch_embed.proj.weight":
            assert torch.equal(v, seg[k]), k
    assert state["patch_embed.proj.weight"].shape == (96, 1, 8, 8)
    assert all(torch.equal(v, det.neck.state_dict()[k]) for k, v in neck.items())  # the neck stays fresh
    x = torch.randn(2, 1, 56, 56, dtype=torch.float64)
    big = _patchwise_upsample(x, 4, 2)
    w4, w8 = seg["patch_embed.proj.weight"].double(), state["patch_embed.proj.weight"].double()
    small_tokens = F.conv2d(x, w4, stride=4)
    big_tokens = F.conv2d(big, w8, stride=8)
    # float32 kernels from a float32 pseudo-inverse: errors of order 1e-6 relative to the tokens' scale
    assert torch.allclose(big_tokens, small_tokens, atol=1e-4 * small_tokens.abs().max().item())


def test_recipe_refuses_an_unknown_start():
    with pytest.raises(ValueError, match="mosaic-segvit"):
        recipe_det(0, quick=True, epochs=0.01, samples=64, start="fmnist-vit")


def test_quick_recipe_from_scratch_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_TRAIN_DIR", str(tmp_path))
    _, route = recipe_det(0, quick=True, epochs=0.02, samples=64, start=None)
    assert route.startswith("DetViT from scratch")


def test_more_det_continues_with_the_same_loss(tmp_path, monkeypatch):
    """The continuation trains the given model (its weights change, stay finite) and names its stage."""
    from prunekit.zoo.train import More
    monkeypatch.setenv("PRUNEKIT_TRAIN_DIR", str(tmp_path))
    model = build_detvit()
    before = [p.detach().clone() for p in model.parameters()]
    words = more_det(model, 0, True, More(0.25, batch=32))
    assert "more epochs on 512 generated 112 px detection mosaics" in words and "batch 32" in words
    after = list(model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(torch.isfinite(p).all() for p in after)
