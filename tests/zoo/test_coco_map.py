"""COCO mAP through pycocotools: known cases, ignored boxes, the size split."""
import pytest
import torch

from prunekit.errors import PruningError
from prunekit.zoo.coco_map import coco_map

pytest.importorskip("pycocotools")


def _t(boxes, labels, ignore=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
    if ignore is not None:
        out["ignore"] = torch.tensor(ignore)
    return out


def _d(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.long)}


def test_perfect_detections_score_one_and_a_box_at_iou_0_6_counts_at_0_5_only():
    t = [_t([[10, 10, 50, 50]], [1]), _t([[60, 60, 100, 90]], [4])]
    assert coco_map([_d([[10, 10, 50, 50]], [0.9], [1]), _d([[60, 60, 100, 90]], [0.8], [4])], t, 112)["map"] == 1.0
    shifted = [_d([[10, 18, 50, 58]], [0.9], [1]), _d([[60, 60, 100, 90]], [0.8], [4])]   # IoU 32/48 = 0.667
    m = coco_map(shifted, t, 112)
    assert m["map50"] == 1.0 and m["map75"] == 0.5 and 0.5 < m["map"] < 1.0


def test_a_wrong_class_or_a_missed_object_lowers_the_map():
    t = [_t([[10, 10, 50, 50], [60, 60, 100, 100]], [1, 2])]
    assert coco_map([_d([[10, 10, 50, 50], [60, 60, 100, 100]], [0.9, 0.8], [1, 3])], t, 112)["map"] < 1.0
    assert coco_map([_d([[10, 10, 50, 50]], [0.9], [1])], t, 112)["map"] == 0.5   # class 2 missed


def test_detections_on_ignored_targets_neither_help_nor_hurt():
    t = [_t([[10, 10, 50, 50], [60, 60, 100, 100]], [1, 1], [False, True])]
    with_it = coco_map([_d([[10, 10, 50, 50], [60, 60, 100, 100]], [0.9, 0.95], [1, 1])], t, 112)
    without = coco_map([_d([[10, 10, 50, 50]], [0.9], [1])], t, 112)
    assert with_it["map"] == without["map"] == 1.0


def test_the_size_split_is_scaled_to_the_canvas():
    # at 112 px the bounds are (112/640)^2 * (32^2, 96^2) = 31.4 and 282 px^2
    t = [_t([[0, 0, 5, 5], [10, 10, 24, 24], [40, 40, 100, 100]], [0, 0, 0])]
    d = [_d([[0, 0, 5, 5], [40, 40, 100, 100]], [0.9, 0.8], [0, 0])]   # the medium one is missed
    m = coco_map(d, t, 112)
    assert m["map_small"] == 1.0 and m["map_large"] == 1.0 and m["map_medium"] == 0.0


def test_bad_input_is_one_clear_error():
    with pytest.raises(PruningError, match="2 images of detections for 1 images"):
        coco_map([_d([], [], []), _d([], [], [])], [_t([[0, 0, 4, 4]], [0])], 112)
    with pytest.raises(PruningError, match="no target boxes"):
        coco_map([_d([], [], [])], [_t(torch.zeros(0, 4).tolist(), [])], 112)
