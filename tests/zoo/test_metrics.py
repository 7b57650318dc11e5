"""Segmentation metrics of the zoo registry: mean IoU and its boundary-band variant."""
import doctest

import torch

import prunekit.zoo.registry as registry
from prunekit.zoo.registry import boundary_band, boundary_miou, miou_of


def test_docstring_examples_run():
    assert doctest.testmod(registry).failed == 0


def test_boundary_band_marks_pixels_near_label_changes():
    y = torch.zeros(1, 9, 9, dtype=torch.long)
    y[0, 3:6, 3:6] = 4                                  # a 3x3 object
    band1, band2 = boundary_band(y, 1), boundary_band(y, 2)
    assert int(band1.sum()) == 5 * 5 - 1                # the 5x5 around the object but its centre
    assert not band1[0, 4, 4] and band1[0, 2, 2] and not band1[0, 1, 1]
    assert band2[0, 1, 1] and not band2[0, 0, 0] and bool((band1 <= band2).all())
    assert not boundary_band(torch.zeros(2, 5, 5, dtype=torch.long)).any()


def test_boundary_miou_only_sees_the_band():
    y = torch.zeros(1, 9, 9, dtype=torch.long)
    y[0, 3:6, 3:6] = 4
    pred = y.clone()
    pred[0, 0, 0] = 7                                   # an error far from any boundary
    assert boundary_miou(pred, y, 1) == 1.0 and miou_of(pred, y) < 1.0
    blurred = y.clone()
    blurred[0, 2:7, 2:7] = 4                            # the object grown by one pixel: boundary errors
    assert boundary_miou(blurred, y, 1) < miou_of(blurred, y) < 1.0


def test_detection_size_split_cuts_the_item_sides_into_thirds_and_fills_each_class():
    """mosaic-det's small / medium / large bounds are the thirds of the log-uniform item sides, and
    every class holds a fair share of the test boxes (COCO's scaled bounds would leave "small" empty)."""
    import math

    from prunekit.data.detection import SIZE_RANGE
    from prunekit.zoo.registry import DET_AREA_BOUNDS
    lo, hi = SIZE_RANGE
    for k, bound in enumerate(DET_AREA_BOUNDS, start=1):
        assert abs(math.sqrt(bound) - lo * (hi / lo) ** (k / 3)) < 0.5
    _, boxes, classes, _ = registry._eval_data("mosaic-det", 200)
    real = boxes[classes >= 0]
    area = (real[:, 2] - real[:, 0]) * (real[:, 3] - real[:, 1])
    small, medium = DET_AREA_BOUNDS
    shares = [float((area < small).float().mean()), float(((area >= small) & (area < medium)).float().mean()),
              float((area >= medium).float().mean())]
    # visible boxes are smaller than the items' squares (silhouettes, occlusion), so "small" is the largest
    assert all(s > 0.15 for s in shares), shares
    assert float((area < (112 / 640 * 32) ** 2).float().mean()) < 0.02  # COCO's scaled "small": almost none
