"""Training recipes: distillation from precomputed teacher logits matches distilling on the fly."""
import pytest
import torch
from torch import nn

from prunekit.data import load_fashion_mnist, normalize
from prunekit.data.fashion_mnist import MEAN, STD
from prunekit.zoo import models
from prunekit.zoo.train import _loader, _random_crops, _teacher, fit, teacher_logits


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def test_teacher_logits_are_fmnist_resnet_on_normalised_images():
    x, _ = load_fashion_mnist("test")
    x = x[:40]
    with torch.no_grad():
        expected = _teacher()(normalize(x))
    got = teacher_logits(x)
    assert got.shape == (40, 10)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_precomputed_logits_train_exactly_like_the_live_teacher():
    x, y = load_fashion_mnist("train")
    x, y = x[:256], y[:256]
    live, offline = _tiny(), _tiny()
    fit(live, _loader(x, y, 64, False), 1, 1e-3, 4, teacher=_teacher(), label_smoothing=0.0)
    fit(offline, _loader(x, y, 64, False, soft=teacher_logits(x)), 1, 1e-3, 4, label_smoothing=0.0)
    for a, b in zip(live.parameters(), offline.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    plain = _tiny()
    fit(plain, _loader(x, y, 64, False), 1, 1e-3, 4, label_smoothing=0.0)
    assert not torch.allclose(plain[1].weight, offline[1].weight), "the distillation term changed nothing"


def test_soft_loader_yields_the_logits_of_the_sampled_rows():
    x, y = torch.rand(20, 1, 28, 28), torch.arange(20) % 10
    soft = torch.arange(20.0)[:, None].repeat(1, 10)
    for xb, yb, tb in _loader(x, y, 5, True, soft=soft)(torch.Generator().manual_seed(0)):
        assert xb.shape == (5, 1, 28, 28)
        assert torch.equal(tb[:, 0].long() % 10, yb)


def test_frame_loader_takes_one_random_frame_of_each_clip():
    n, t = 12, 8
    clips = torch.arange(t, dtype=torch.uint8).view(1, 1, t, 1, 1).repeat(n, 1, 1, 4, 4)
    clips[:, 0, :, 0, 0] = torch.arange(n, dtype=torch.uint8)[:, None] + 100  # clip id in a corner pixel
    y, soft = torch.arange(n) % 10, torch.arange(float(n))[:, None].repeat(1, 10)
    seen = set()
    for xb, yb, tb in _loader(clips, y, 4, False, soft=soft, frames=True)(torch.Generator().manual_seed(0)):
        assert xb.shape == (4, 1, 4, 4)
        raw = xb * STD + MEAN  # undo normalize, back to [0, 1]
        ids = (raw[:, 0, 0, 0] * 255).round().long() - 100
        assert torch.equal(tb[:, 0].long(), ids) and torch.equal(yb, ids % 10)
        frame = (raw[:, 0, 1, 1] * 255).round().long()
        assert ((frame >= 0) & (frame < t)).all()
        seen |= set(frame.tolist())
    assert len(seen) > 1, "every clip gave the same frame"


def test_random_crops_take_the_same_window_of_image_and_label_map():
    n, side, size = 16, 56, 28
    where = torch.arange(side * side).view(side, side)  # each pixel names its own position
    y = where.repeat(n, 1, 1)
    x = y[:, None].float()
    xb, yb = _random_crops(x, y, size, torch.Generator().manual_seed(0))
    assert xb.shape == (n, 1, size, size) and yb.shape == (n, size, size)
    assert torch.equal(xb[:, 0].long(), yb)
    for k in range(n):
        a, b = divmod(int(yb[k, 0, 0]), side)
        assert a <= side - size and b <= side - size
        assert torch.equal(yb[k], where[a:a + size, b:b + size])
    assert len(set(yb[:, 0, 0].tolist())) > 1, "every sample got the same window"


def test_crop_loader_keeps_image_and_labels_aligned_through_the_flip():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 11, (32, 56, 56), generator=g)
    x = (y * 20).to(torch.uint8)[:, None]  # the image spells out its label map
    flipped = 0
    for xb, yb in _loader(x, y, 8, True, seg=True, crop=28)(torch.Generator().manual_seed(2)):
        assert xb.shape == (8, 1, 28, 28) and yb.shape == (8, 28, 28)
        assert torch.equal(((xb[:, 0] * STD + MEAN) * 255 / 20).round().long(), yb)
        flipped += 1
    assert flipped == 4


def test_quick_segvit_recipe_segments_whole_mosaics_after_28px_crops():
    from prunekit.zoo.train import recipe_segvit
    model, route = recipe_segvit(0, quick=True)
    assert type(model) is type(models.build_segvit(4))
    assert model.encoder.patch_embed.num_patches == 196 and len(model.encoder.blocks) == 8
    assert model(torch.zeros(2, 1, 56, 56)).shape == (2, 11, 56, 56)
    assert "28 px windows" in route and "distilled" in route and "196 tokens" in route


def test_textured_top1_scores_raw_images_once_normalised():
    from prunekit.zoo.registry import top1
    from prunekit.zoo.train import textured_top1
    teacher = _teacher()
    x, y = load_fashion_mnist("test")
    clean = top1(teacher, x[:200], y[:200])
    textured = textured_top1(teacher, 200, 0)
    assert clean > 0.85  # top1 normalises, so raw uint8 images are the right input
    # fmnist-resnet never saw textures (0.25 on these 200); normalising the input twice gives 0.08, chance
    assert 0.15 < textured < clean


def test_segvit_continuation_trains_the_shipped_checkpoint_on_whole_mosaics():
    from prunekit.zoo.store import load_state
    from prunekit.zoo.train import More, _continue
    model, route, before = _continue("mosaic-segvit", 0, True, More(0.2))
    shipped = load_state("mosaic-segvit")
    assert before > 0 and "0.2 more epochs on the 512 whole mosaics at 196 tokens" in route
    assert not torch.equal(model.decoder.weight, shipped["decoder.weight"])
    assert model(torch.zeros(1, 1, 56, 56)).shape == (1, 11, 56, 56)


def test_quick_vit_recipe_gives_a_196_token_model():
    from prunekit.zoo.train import recipe_vit
    model, route = recipe_vit(0, quick=True)
    assert model.patch_embed.num_patches == 196 and len(model.blocks) == 12
    assert "49 tokens" in route and "distilled" in route
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert type(model) is type(models.build_vit(2))


def test_quick_vivit_recipe_gives_a_196_token_video_model_distilled_per_clip():
    from prunekit.zoo.train import _motion_train, recipe_vivit
    x, y, soft = _motion_train(64, 0)
    assert soft.shape == (64, 10)
    assert (soft.argmax(1) == y).float().mean() > 0.8  # the teacher's logits are for each clip's own item
    model, route = recipe_vivit(0, quick=True)
    assert model.patch_embed.num_patches == 196 and len(model.blocks) == 8
    assert "49 tokens" in route and "distilled" in route
    assert model(torch.zeros(2, 1, 8, 56, 56)).shape == (2, 10)


def test_fit_cuts_its_schedule_to_a_time_budget_and_says_how_many_steps_ran(monkeypatch):
    # a fake clock (10 ms per reading) makes the cut independent of this machine's speed and load
    import types

    from prunekit.train import loop
    ticks = iter(range(10**9))
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks) * 0.01))
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))

    def batches(g):
        for i in range(0, 64, 8):
            yield x[i:i + 8], y[i:i + 8]
    model = torch.nn.Linear(8, 2)
    res = fit(model, batches, 10_000, 1e-2, 8, budget_s=0.3, device="cpu")
    assert 100 < res.steps < 80_000  # probed for 60 steps, then cut far below the 80000 asked
    assert res.last_lr < 1e-4  # the cosine schedule was cut with it and ran down to ~0 (uncut: still 1e-2)
    full = fit(torch.nn.Linear(8, 2), batches, 10, 1e-2, 8, budget_s=1e6)
    plain = fit(torch.nn.Linear(8, 2), batches, 10, 1e-2, 8)
    assert full.steps == plain.steps == 80 and full.last_lr == plain.last_lr  # a slack budget changes nothing


def test_continuation_options_reach_the_route_and_the_stage():
    from prunekit.zoo.store import load_state
    from prunekit.zoo.train import More, _continue
    model, route, _ = _continue("motion-vivit", 0, True, More(0.5, device="cpu", batch=32, lr=5e-4))
    assert route.endswith("0.5 more epochs on 512 clips at 196 tokens, batch 32, lr 0.0005, shift+flip, "
                          "distilled from fmnist-resnet's logits for each clip's clean item (KL at T=2, "
                          "weight 0.5, no label smoothing)")
    assert not torch.equal(model.head.weight, load_state("motion-vivit")["head.weight"])  # it trained


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_cuda_continuation_without_cuda_is_refused_up_front():
    from prunekit.zoo.train import More
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        More(1, device="cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        More(1, device="gpu0")


def test_segmentation_shift_moves_mosaic_and_label_map_together():
    from prunekit.zoo.train import _shift_pair
    y = torch.randint(1, 11, (6, 56, 56))
    x = y[:, None].to(torch.uint8)  # an image equal to its label map: aligned iff equal after the shift
    g, moved = torch.Generator().manual_seed(0), 0
    for _ in range(8):
        xs, ys = _shift_pair(x, y, 4, g)
        assert xs.shape == x.shape and ys.shape == y.shape and xs.dtype == torch.uint8
        assert torch.equal(xs[:, 0].long(), ys)  # moved together; what comes in is 0 (black / background)
        moved += int((ys == 0).any())
    assert moved >= 6  # 81 offsets, one of them the identity
    x8, y8 = x[:4], y[:4]  # the loader shifts only when asked: without it, the batches are as before
    plain = next(_loader(x8, y8, 4, True, seg=True)(torch.Generator().manual_seed(1)))
    zero = next(_loader(x8, y8, 4, True, seg=True, seg_shift=0)(torch.Generator().manual_seed(1)))
    shifted = next(_loader(x8, y8, 4, True, seg=True, seg_shift=4)(torch.Generator().manual_seed(1)))
    assert all(torch.equal(a, b) for a, b in zip(plain, zero, strict=True))
    assert shifted[1].shape == plain[1].shape and not torch.equal(shifted[1], plain[1])


@pytest.mark.parametrize("option", [{"shift": 2}, {"offset": 100}, {"decoder_only": True}, {"stream": True}])
def test_segmentation_options_are_for_mosaic_segvit_only(option):
    from prunekit.zoo.train import More, _continue
    with pytest.raises(ValueError, match="mosaic-segvit only"):
        _continue("motion-vivit", 0, True, More(0.1, **option))


def test_a_decoder_only_continuation_on_fresh_mosaics_trains_the_heads_and_leaves_the_encoder():
    from prunekit.zoo.store import load_state
    from prunekit.zoo.train import More, _continue
    model, route, _ = _continue("mosaic-segvit", 0, True, More(0.2, offset=96000, decoder_only=True))
    shipped = load_state("mosaic-segvit")
    enc = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    assert all(torch.equal(v, shipped[k]) for k, v in enc.items())  # frozen
    assert not torch.equal(model.decoder.weight, shipped["decoder.weight"])
    assert not torch.equal(model.refine.fuse[0].weight, shipped["refine.fuse.0.weight"])
    assert all(p.requires_grad for p in model.parameters())  # the freeze was undone afterwards
    assert ("0.2 more epochs on 512 whole training mosaics numbered 96000-96511 at 196 tokens, decoder and "
            "pixel-refinement head only (encoder frozen)") in route


def test_a_streamed_segvit_continuation_trains_on_new_mosaics_and_refuses_an_offset():
    from prunekit.zoo.store import load_state
    from prunekit.zoo.train import More, _continue
    model, route, _ = _continue("mosaic-segvit", 0, True, More(0.25, stream=True, batch=32))
    assert route.endswith("0.25 more epochs on mosaics drawn new for every batch from the 60000 training items "
                          "(512 to an epoch, rendered on the training device) at 196 tokens (batch 32, lr 0.0002, "
                          "flip, no label smoothing)")
    assert not torch.equal(model.encoder.blocks[0].attn.qkv.weight,
                           load_state("mosaic-segvit")["encoder.blocks.0.attn.qkv.weight"])
    with pytest.raises(ValueError, match="give one of them"):
        More(1, stream=True, offset=100)


def test_a_continuation_checkpoints_and_the_same_command_resumes_it_from_its_own_start():
    from dataclasses import replace

    from prunekit.train.checkpoint import latest
    from prunekit.zoo.store import train_dir
    from prunekit.zoo.train import More, _continue
    more = More(0.25, stream=True, batch=32)
    first, route, _ = _continue("mosaic-segvit", 0, True, more)
    assert "of a stopped run" not in route
    folders = list(train_dir("").iterdir())
    assert len(folders) == 1 and latest(folders[0]) is not None
    again, route, _ = _continue("mosaic-segvit", 0, True, more)  # the finished run: nothing left to train
    assert "(resumed at step 4 of a stopped run)" in route
    for (k, a), b in zip(first.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    _continue("mosaic-segvit", 0, True, replace(more, lr=1e-4))  # another setting: another folder
    assert len(list(train_dir("").iterdir())) == 2
    assert More(1, budget_minutes=1).start == ""  # a budgeted run is not checkpointed (see More)


def test_the_dynamicvit_continuation_trains_its_own_objective_with_topk_and_resumes():
    from prunekit.zoo.store import load_state, read_manifest
    from prunekit.zoo.train import More, _continue
    more = More(0.125, batch=32)                     # 1,024 quick images: 4 steps
    model, route, _ = _continue("fmnist-vit-dynamic", 0, True, more)
    old = read_manifest()["fmnist-vit-dynamic"]
    assert route.startswith(old["route"]) and old["sha256"][:12] in route
    assert "0.125 more epochs on 1024 images" in route and "Gumbel-top-k" in route and "137/96/67" in route
    assert model.sampling == "topk" and not model.training
    shipped = load_state("fmnist-vit-dynamic")
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, shipped[k])]
    assert any(k.startswith("scorers.") for k in moved) and any(k.startswith("vit.blocks.") for k in moved)
    again, route, _ = _continue("fmnist-vit-dynamic", 0, True, more)   # finished: the same command resumes it
    assert "(resumed at step 4 of a stopped run)" in route
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_a_segvit_checkpoint_from_before_the_refine_head_gets_it_and_the_route_says_so(monkeypatch):
    import prunekit.zoo.store as store
    from prunekit.zoo.train import More, _continue
    shipped = store.load_state("mosaic-segvit")
    old = {k: v for k, v in shipped.items() if not k.startswith("refine.")}
    monkeypatch.setattr(store, "load_state", lambda name: old)
    model, route, _ = _continue("mosaic-segvit", 0, True, More(0.1, decoder_only=True))
    assert "added the pixel-refinement head (zero-initialised output conv, so it started with the checkpoint's " \
           "outputs), then 0.1 more epochs" in route
    assert torch.equal(model.encoder.pos_embed, old["encoder.pos_embed"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stream_batches_are_rendered_on_cuda_with_aligned_labels():
    from prunekit.data.mosaic import SILHOUETTE_LEVEL
    from prunekit.zoo.train import _stream
    items, labels = load_fashion_mnist("train")
    xb, yb = next(_stream(items, labels, 64, 1, shift=3, device="cuda")(torch.Generator().manual_seed(0)))
    assert xb.is_cuda and yb.is_cuda and xb.shape == (64, 1, 56, 56) and yb.dtype == torch.int64
    level = normalize(torch.tensor(SILHOUETTE_LEVEL, dtype=torch.uint8)).item()
    assert bool((xb[:, 0][yb > 0] > level).all())


def test_quick_detection_recipe_trains_and_scores_coco_map(tmp_path, monkeypatch):
    """mosaic-det's recipe end to end on a tiny run: flipped batches keep their boxes, the CenterNet loss
    trains, and the model is scored by pycocotools' mAP on the eval split."""
    pytest.importorskip("pycocotools")
    import torch

    from prunekit.data import load_det_mosaic
    from prunekit.zoo.registry import evaluate_model
    from prunekit.zoo.train_det import det_batches, recipe_det
    monkeypatch.setenv("PRUNEKIT_TRAIN_DIR", str(tmp_path))
    x, boxes, classes, ignore = load_det_mosaic("train", n=8)
    g = torch.Generator().manual_seed(0)
    plain = next(det_batches(x, boxes, classes, 8, False)(torch.Generator().manual_seed(0)))
    xb, bb, cb, ib = next(det_batches(x, boxes, classes, 8, True, ignore)(g))
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ib, ignore[order]) and torch.equal(cb, classes[order])  # flags travel with their items
    flipped = [i for i in range(8) if not torch.equal(xb[i], plain[0][i])]
    assert flipped and all(torch.equal(xb[i], plain[0][i].flip(-1)) for i in flipped)
    for i in flipped:  # each flipped box is the mirror image of the unflipped one
        real = cb[i] >= 0
        assert torch.equal(bb[i][real][:, [0, 2]], 112 - plain[1][i][real][:, [2, 0]])
        assert torch.equal(bb[i][real][:, [1, 3]], plain[1][i][real][:, [1, 3]])
    model, route = recipe_det(0, quick=True, epochs=0.25, samples=128)
    assert "encoder from the shipped mosaic-segvit" in route and any(tmp_path.iterdir())
    m = evaluate_model("mosaic-det", model, limit=16)
    assert set(m) == {"map", "map50", "map75", "map_small", "map_medium", "map_large"} and 0 <= m["map"] <= 1
