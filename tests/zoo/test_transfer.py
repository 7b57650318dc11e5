import pytest
import torch
from torch import nn

from prunekit.zoo import models
from prunekit.zoo.transfer import decoder_from_head, inflate_to_video, transfer_vit


def test_transfer_same_patch_larger_grid_copies_blocks_and_resamples_pos():
    src, dst = models.vit(28, 4, 32, 2, 2, 10), models.vit(56, 4, 32, 2, 2, 10)
    transfer_vit(src.state_dict(), dst)
    assert torch.equal(dst.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)
    assert torch.equal(dst.patch_embed.proj.weight, src.patch_embed.proj.weight)
    assert dst.pos_embed.shape == (1, 1 + 196, 32)
    assert torch.equal(dst.pos_embed[:, 0], src.pos_embed[:, 0])  # class token position kept
    assert not torch.equal(dst.head.weight[:5], src.head.weight[:5])  # classifier left as initialised


def test_transfer_into_segmenter_encoder_takes_first_blocks():
    src = models.vit(28, 4, 96, 12, 4, 10)
    seg = transfer_vit(src.state_dict(), models.build_segvit(4))
    assert len(seg.encoder.blocks) == 8
    assert torch.equal(seg.encoder.blocks[7].mlp.fc2.weight, src.blocks[7].mlp.fc2.weight)


def test_transfer_between_segmenters_copies_encoder_and_decoder():
    crops = models.build_segvit(4, canvas=28)
    seg = transfer_vit(crops.state_dict(), models.build_segvit(4), skip=())
    assert torch.equal(seg.decoder.weight, crops.decoder.weight) and torch.equal(seg.decoder.bias, crops.decoder.bias)
    assert torch.equal(seg.encoder.blocks[5].attn.qkv.weight, crops.encoder.blocks[5].attn.qkv.weight)
    assert torch.equal(seg.encoder.patch_embed.proj.weight, crops.encoder.patch_embed.proj.weight)
    assert seg.encoder.pos_embed.shape == (1, 1 + 196, 96)
    assert torch.equal(seg.encoder.pos_embed[:, 0], crops.encoder.pos_embed[:, 0])


def test_transfer_pi_resizes_patch_embed_to_finer_patch():
    coarse, fine = models.build_vit(4), models.build_vit(2)
    transfer_vit(coarse.state_dict(), fine, skip=())
    assert fine.patch_embed.proj.weight.shape[-2:] == (2, 2)
    assert torch.equal(fine.head.weight, coarse.head.weight)


def test_inflated_video_embeds_a_static_clip_as_its_frame():
    image = models.vit(56, 8, 64, 8, 4, 10)
    video = inflate_to_video(image.state_dict(), models.build_vivit())
    frame = torch.randn(2, 1, 56, 56)
    clip = frame.unsqueeze(2).repeat(1, 1, 8, 1, 1)
    with torch.no_grad():
        per_frame = image.patch_embed(frame)  # (2, 49, 64)
        tokens = video.patch_embed(clip)  # (2, 196, 64), time-major
        torch.testing.assert_close(tokens, per_frame.repeat(1, 4, 1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(video.pos_embed[:, 1:], image.pos_embed[:, 1:].repeat(1, 4, 1))
        assert torch.equal(video.blocks[3].norm1.weight, image.blocks[3].norm1.weight)


def test_inflated_video_keeps_the_frame_classifier_unless_told_not_to():
    image = models.vit(56, 8, 64, 8, 4, 10)
    kept = inflate_to_video(image.state_dict(), models.build_vivit())
    assert torch.equal(kept.head.weight, image.head.weight) and torch.equal(kept.head.bias, image.head.bias)
    fresh = inflate_to_video(image.state_dict(), models.build_vivit(), head=False)
    assert not torch.equal(fresh.head.weight, image.head.weight)
    assert torch.equal(fresh.blocks[7].mlp.fc1.weight, image.blocks[7].mlp.fc1.weight)


def test_decoder_from_head_scores_each_patch_as_the_classifier_does():
    cls = models.vit(28, 4, 96, 8, 4, 10, global_pool="avg", fc_norm=False).eval()
    seg = transfer_vit(cls.state_dict(), models.build_segvit(4)).eval()
    decoder_from_head(cls.state_dict(), seg.decoder)
    x = torch.randn(2, 1, 56, 56)
    with torch.no_grad():
        tokens = seg.encoder.forward_features(x)[:, seg.encoder.num_prefix_tokens:]
        per_patch = seg.decoder(tokens)
        assert torch.allclose(per_patch[..., 1:], cls.head(tokens), atol=1e-6)  # item rows = classifier
        assert torch.equal(per_patch[..., 0], torch.zeros_like(per_patch[..., 0]))  # background row at zero
    with pytest.raises(ValueError, match="background row"):
        decoder_from_head(cls.state_dict(), nn.Linear(96, 10))


def test_adding_the_refine_head_to_an_old_segmenter_state_keeps_its_outputs():
    from prunekit.zoo.transfer import load_adding_heads
    torch.manual_seed(0)
    old = models.build_segvit(refine=False).eval()
    new = models.build_segvit().eval()
    kept = load_adding_heads(new, old.state_dict(), ("refine.",))
    assert kept and all(k.startswith("refine.") for k in kept)
    assert len(kept) == sum(1 for k in new.state_dict() if k.startswith("refine."))
    x = torch.randn(3, 1, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x), atol=1e-5, rtol=0)
    assert load_adding_heads(new, new.state_dict(), ("refine.",)) == []  # a full state keeps nothing


def test_adding_heads_refuses_a_state_missing_other_keys_and_leaves_the_model_as_it_was():
    from prunekit.zoo.transfer import load_adding_heads
    model = models.build_segvit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.zeros_like(v) for k, v in models.build_segvit(refine=False).state_dict().items()
             if k != "decoder.bias"}
    with pytest.raises(ValueError, match=r"missing \['decoder.bias'\]"):
        load_adding_heads(model, state, ("refine.",))
    state["decoder.bias"] = torch.zeros(11)
    state["decoder.weight"] = torch.zeros(11, 64)  # the wrong width: refused before anything is copied
    with pytest.raises(ValueError, match=r"decoder.weight \(11, 64\) vs \(11, 96\)"):
        load_adding_heads(model, state, ("refine.",))
    state["decoder.weight"] = torch.zeros(11, 96)
    state["refine.proj.bias"] = torch.zeros(8)  # a head only in part
    with pytest.raises(ValueError, match=r"heads only in part \['refine.'\]"):
        load_adding_heads(model, state, ("refine.",))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_segmenter_pickled_before_the_refine_head_existed_still_runs():
    model = models.build_segvit(refine=False).eval()
    del model.refine  # what unpickling a SegViT saved by the code before the head gives
    assert model(torch.randn(1, 1, 56, 56)).shape == (1, 11, 56, 56)
