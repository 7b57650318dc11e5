"""COCO box mAP through pycocotools (never a hand-written mAP), for in-memory targets and detections.

:func:`coco_map` builds the ground truth and the detections as COCO structures in memory and runs
``pycocotools.cocoeval.COCOeval`` (101-point interpolated AP over IoU 0.50:0.95, up to 100
detections per image). Targets marked ``ignore`` become ``iscrowd`` boxes: a detection on them
is neither a true nor a false positive. The small / medium / large split uses COCO's area bounds
scaled to the canvas, ``(size / 640)**2 * (32**2, 96**2)`` by default, since COCO's absolute
bounds (for ~640 px images) would call every object of a 112 px mosaic small; ``area_bounds``
overrides them.

>>> t = [{"boxes": torch.tensor([[10., 10., 50., 40.]]), "labels": torch.tensor([2])}]
>>> perfect = [{"boxes": torch.tensor([[10., 10., 50., 40.]]), "scores": torch.tensor([0.9]),
...             "labels": torch.tensor([2])}]
>>> coco_map(perfect, t, size=112)["map"]
1.0
>>> coco_map([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}],
...          t, size=112)["map"]
0.0
"""
from __future__ import annotations

import contextlib
import io

import torch

from prunekit.errors import PruningError

__all__ = ["coco_map", "KEYS"]

# COCOeval.stats[0:6] in order
KEYS = ("map", "map50", "map75", "map_small", "map_medium", "map_large")


def _area_bounds(size: int) -> tuple[float, float]:
    scale = (size / 640) ** 2
    return 32 ** 2 * scale, 96 ** 2 * scale


def coco_map(detections: list[dict], targets: list[dict], size: int,
             area_bounds: tuple[float, float] | None = None) -> dict[str, float]:
    """mAP@[.5:.95], mAP@.5, mAP@.75 and mAP for small / medium / large objects, each rounded to 4 places.

    ``detections``: per image ``{"boxes" (N, 4) xyxy px, "scores" (N,), "labels" (N,)}``;
    ``targets``: per image ``{"boxes" (K, 4), "labels" (K,)}`` and optionally ``"ignore"`` (K,) bool.
    ``size``: the image side in px (for the area split). A size class with no object scores -1, as
    in pycocotools; with no detections at all every key is 0.0. Ignored targets are pycocotools'
    ``iscrowd`` boxes, which forgive any same-class detection mostly inside them.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise PruningError("pycocotools", "compute COCO mAP", "it is not installed: pip install pycocotools "
                           "(the [detection] extra)") from e
    if len(detections) != len(targets):
        raise PruningError("detections", "compute COCO mAP", f"{len(detections)} images of detections for "
                           f"{len(targets)} images of targets")
    images, anns, dets, classes = [], [], [], set()
    for i, (d, t) in enumerate(zip(detections, targets, strict=True)):
        images.append({"id": i, "width": size, "height": size})
        ignore = t.get("ignore", torch.zeros(len(t["labels"]), dtype=torch.bool))
        for box, label, ign in zip(t["boxes"].tolist(), t["labels"].tolist(), ignore.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(label), "bbox": [box[0], box[1], w, h],
                         "area": w * h, "iscrowd": int(bool(ign))})
            classes.add(int(label))
        for box, score, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist(), strict=True):
            dets.append({"image_id": i, "category_id": int(label), "score": float(score),
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    if not anns:
        raise PruningError("targets", "compute COCO mAP", "no target boxes in any image")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c, "name": str(c)} for c in sorted(classes)]}
        gt.createIndex()
        if not dets:
            return dict.fromkeys(KEYS, 0.0)
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        small, medium = area_bounds or _area_bounds(size)
        ev.params.areaRng = [[0, 1e10], [0, small], [small, medium], [medium, 1e10]]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: round(float(v), 4) for k, v in zip(KEYS, ev.stats[:6], strict=True)}
