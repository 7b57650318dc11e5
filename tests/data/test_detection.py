"""mosaic-det samples: deterministic, boxes on the visible silhouettes, occluded items ignored, padded rows."""
import torch

from prunekit.data.detection import DET_CANVAS, MAX_ITEMS, det_targets, make_det_mosaic
from prunekit.data.texture import sample_generator


def _pool(n=10):
    """Solid garments of value 255: a pixel brighter than any texture (max 90) is an item's (resized edges
    fall between the two)."""
    items = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    for i in range(n):
        items[i, 0, 2 + i % 5:26, 3:25 - i % 4] = 255
    return items, torch.arange(n) % 10


def test_samples_are_a_pure_function_of_seed_split_and_index():
    items, labels = _pool()
    a = make_det_mosaic(items, labels, sample_generator(0, "test", 7))
    b = make_det_mosaic(items, labels, sample_generator(0, "test", 7))
    c = make_det_mosaic(items, labels, sample_generator(0, "test", 8))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_boxes_cover_the_visible_silhouettes_and_stay_on_the_canvas():
    items, labels = _pool()
    for idx in range(40):
        x, boxes, classes, ignore = make_det_mosaic(items, labels, sample_generator(1, "train", idx))
        assert x.shape == (1, DET_CANVAS, DET_CANVAS) and x.dtype == torch.uint8
        real = classes >= 0
        assert 1 <= int(real.sum()) <= MAX_ITEMS and (classes[~real] == -1).all()
        assert real[: int(real.sum())].all()  # padding rows come last
        b = boxes[real]
        assert (b[:, 0] < b[:, 2]).all() and (b[:, 1] < b[:, 3]).all()
        assert (b >= 0).all() and (b <= DET_CANVAS).all()
        covered = torch.zeros(DET_CANVAS, DET_CANVAS, dtype=torch.bool)
        for x0, y0, x1, y1 in b.long().tolist():
            covered[y0:y1, x0:x1] = True
            assert (x[0, y0:y1, x0:x1] > 90).any()  # every box holds some of its garment
        assert covered[x[0] > 90].all()  # every garment pixel is in some box


def test_mostly_hidden_items_are_ignored_and_only_real_rows_are_flagged():
    items, labels = _pool()
    seen = {"ignored": 0, "kept": 0}
    for idx in range(200):
        _, boxes, classes, ignore = make_det_mosaic(items, labels, sample_generator(2, "train", idx))
        real = classes >= 0
        seen["ignored"] += int(ignore[real].sum())
        seen["kept"] += int((~ignore[real]).sum())
        assert not ignore[~real].any()
    assert seen["ignored"] > 0 and seen["kept"] > 5 * seen["ignored"]


def test_targets_drop_the_padding():
    items, labels = _pool()
    x, boxes, classes, ignore = make_det_mosaic(items, labels, sample_generator(0, "test", 0))
    t = det_targets(boxes[None], classes[None], ignore[None])
    assert len(t) == 1 and len(t[0]["labels"]) == int((classes >= 0).sum()) and (t[0]["labels"] >= 0).all()
