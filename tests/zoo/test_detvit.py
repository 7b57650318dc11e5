"""mosaic-det's DetViT: CenterNet targets and decoding agree, the loss trains, merging keeps the head's grid."""
import pytest
import torch

from prunekit.measure import count_macs
from prunekit.zoo.detvit import STRIDE, build_detvit, centernet_ignore, centernet_loss, centernet_targets, decode

TARGETS = [{"boxes": torch.tensor([[8., 12., 40., 52.], [60., 20., 100., 44.]]), "labels": torch.tensor([3, 7])},
           {"boxes": torch.tensor([[30., 30., 86., 86.]]), "labels": torch.tensor([0])}]


def _perfect_output(targets, size=112):
    """The raw maps a perfect detector would give: heat-map logits of the targets' Gaussians, their sizes."""
    heat, box, _ = centernet_targets(targets, size)
    logits = torch.logit(heat.clamp(1e-4, 1 - 1e-4))
    return torch.cat([logits, box], dim=1)


def test_decoding_the_training_targets_gives_back_the_boxes():
    dets = decode(_perfect_output(TARGETS), k=10)
    for d, t in zip(dets, TARGETS, strict=True):
        top = d["scores"] > 0.99
        assert sorted(d["labels"][top].tolist()) == sorted(t["labels"].tolist())
        for box, label in zip(t["boxes"], t["labels"], strict=True):
            got = d["boxes"][top][d["labels"][top] == label][0]
            assert torch.allclose(got, box, atol=1e-4)


def test_perfect_maps_score_a_map_of_one():
    pytest.importorskip("pycocotools")
    from prunekit.zoo.coco_map import coco_map
    assert coco_map(decode(_perfect_output(TARGETS)), TARGETS, 112)["map"] == 1.0


def test_the_loss_is_finite_and_falls_when_fitting_a_batch():
    torch.manual_seed(0)
    m = build_detvit().train()
    x = torch.randn(2, 1, 112, 112)
    heat, box, mask = centernet_targets(TARGETS, 112)
    assert heat.shape == (2, 10, 112 // STRIDE, 112 // STRIDE) and int(mask.sum()) == 3
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss, parts = centernet_loss(m(x), heat, box, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["loss"])
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.5 * losses[0]


def test_merging_restores_the_grid_for_the_head_and_is_the_identity_at_zero():
    from prunekit.tokens import merge, merge_dense, unpatch
    torch.manual_seed(0)
    m = build_detvit().eval()
    x = torch.randn(2, 1, 112, 112)
    with torch.no_grad():
        dense = m(x)
        merge_dense(m, windows=0, r=0)
        assert (m(x) - dense).abs().max() <= 1e-5
        unpatch(m)
        macs = count_macs(m, (x,))
        merge_dense(m, windows=20, r=8)
        out = m(x)
        assert out.shape == dense.shape and count_macs(m, (x,)) < 0.8 * macs
        unpatch(m)
        merge(m, r=12)
        assert m(x).shape == dense.shape


def test_an_ignored_item_is_neither_an_object_nor_background():
    """The metric ignores items under 30% visible, so training gives them no centre peak and does not
    push the heat map down inside their boxes; everywhere else the loss is unchanged."""
    torch.manual_seed(0)
    flagged = [{**TARGETS[0], "ignore": torch.tensor([False, True])}, {**TARGETS[1], "ignore": torch.tensor([False])}]
    heat, box, mask = centernet_targets(flagged, 112)
    kept = [{"boxes": TARGETS[0]["boxes"][:1], "labels": TARGETS[0]["labels"][:1]}, TARGETS[1]]
    want = centernet_targets(kept, 112)
    assert all(torch.equal(a, b) for a, b in zip((heat, box, mask), want, strict=True))  # as if it were absent
    ignore = centernet_ignore(flagged, 112)
    # box [60, 20, 100, 44] px of class 7 covers cells x 15..24, y 5..10 at stride 4
    assert ignore[0, 7, 5:11, 15:25].eq(1).all() and ignore.sum() == 10 * 6
    out = torch.randn(2, 14, 28, 28)
    base, _ = centernet_loss(out, heat, box, mask, ignore=ignore)
    inside, outside = out.clone(), out.clone()
    inside[0, 7, 5:11, 15:25] += 5.0          # a confident detection of the ignored item: no penalty
    outside[0, 7, 20:26, 0:5] += 5.0          # the same outside any box: penalised
    assert centernet_loss(inside, heat, box, mask, ignore=ignore)[0] == base
    assert centernet_loss(outside, heat, box, mask, ignore=ignore)[0] > base + 1.0
    assert centernet_loss(inside, heat, box, mask)[0] > base   # without the map it would have been penalised


def test_det_loss_reads_the_ignore_flags_of_a_batch():
    from prunekit.zoo.train_det import det_loss
    torch.manual_seed(0)
    m = build_detvit().eval()
    x = torch.randn(1, 1, 112, 112)
    boxes = torch.tensor([[[8., 12., 40., 52.], [60., 20., 100., 44.], [0., 0., 0., 0.]]])
    classes = torch.tensor([[3, 7, -1]])
    with torch.no_grad():
        plain, _ = det_loss(m, (x, boxes, classes))
        flagged, _ = det_loss(m, (x, boxes, classes, torch.tensor([[False, True, False]])))
        alone, _ = det_loss(m, (x, boxes[:, :1], classes[:, :1]))
    assert flagged != plain and flagged <= alone   # the flagged item: no positive, and no negatives in its box
