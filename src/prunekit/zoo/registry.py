"""``prunekit.zoo.load(name)``: a reference model, example inputs and its task metric, ready to use.

What each model is, and where its data come from, is its :class:`~prunekit.zoo.ZooEntry`
(:data:`prunekit.zoo.entries.ENTRIES`); ``TASKS``, ``NAMES`` and ``EVAL_SAMPLES`` are views of it.

>>> wl = load("fmnist-resnet")          # doctest: +SKIP
>>> wl.model(*wl.example_inputs).shape   # doctest: +SKIP
torch.Size([8, 10])
>>> wl.evaluate(wl.model, limit=500)   # doctest: +SKIP
{'top1': 0.93}
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.data import normalize
from prunekit.zoo.entries import ENTRIES, entry
from prunekit.zoo.store import load_state, read_manifest

__all__ = ["Workload", "load", "evaluate_model", "example_inputs", "score_top1", "score_miou", "score_map", "miou_of",
           "boundary_band", "boundary_miou", "NAMES", "TASKS", "EVAL_SAMPLES"]

TASKS = {name: e.task for name, e in ENTRIES.items()}
NAMES = tuple(ENTRIES)
EVAL_SAMPLES = {name: e.eval_samples for name, e in ENTRIES.items()}  # size of each eval split
EXAMPLE_BATCH = 8  # a vision workload's example inputs: its first 8 eval samples


@dataclass
class Workload:
    """A reference model with everything needed to measure it."""

    name: str
    model: nn.Module
    example_inputs: Any  # a tuple of positional args, or a dict of keyword args
    evaluate: Callable[..., dict]
    task: str
    metric_key: str
    info: dict = field(default_factory=dict)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch: int = 250):
    was = model.training
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # the eval data goes where the model is
    try:
        for i in range(0, x.shape[0], batch):
            yield i, model(normalize(x[i:i + batch]).to(device)).cpu()
    finally:
        model.train(was)


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    correct = sum(int((out.argmax(-1) == y[i:i + out.shape[0]]).sum()) for i, out in _logits(model, x))
    return correct / x.shape[0]


def _confusion(pred: torch.Tensor, true: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(true.flatten() * num_classes + pred.flatten(),
                          minlength=num_classes ** 2).view(num_classes, -1)


def _mean_iou(conf: torch.Tensor) -> float:
    inter = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - inter
    valid = union > 0
    return float((inter[valid] / union[valid]).mean())


def miou_of(pred: torch.Tensor, true: torch.Tensor, num_classes: int = 11) -> float:
    """Mean IoU of label maps ``pred`` against ``true`` over the classes present in either.

    >>> miou_of(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 1]]), 2)
    0.5833333333333333
    """
    return _mean_iou(_confusion(pred, true, num_classes))


def boundary_band(true: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Pixels of label maps ``true`` ``(B, H, W)`` within ``width`` px (8-neighbourhood steps) of a label
    change: where object boundaries are, so where merging tokens across a boundary shows.

    >>> boundary_band(torch.tensor([[[0, 0, 0, 1]]]), 1).int().tolist()
    [[[0, 0, 1, 1]]]
    """
    y = true.float()[:, None]
    k = 2 * width + 1
    hi = nn.functional.max_pool2d(y, k, 1, width)
    lo = -nn.functional.max_pool2d(-y, k, 1, width)
    return (hi != lo)[:, 0]


def boundary_miou(pred: torch.Tensor, true: torch.Tensor, width: int = 2, num_classes: int = 11) -> float:
    """:func:`miou_of` on the :func:`boundary_band` pixels only (a boundary IoU in the spirit of Cheng et
    al., "Boundary IoU", CVPR 2021, with the band taken around the true boundaries).

    >>> boundary_miou(torch.tensor([[[0, 0, 1, 1]]]), torch.tensor([[[0, 0, 0, 1]]]), 1, 2)
    0.25
    """
    band = boundary_band(true, width)
    return miou_of(pred[band], true[band], num_classes)


def miou(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int = 11) -> float:
    """Mean intersection-over-union of ``model`` on images ``x``, over the classes present in the labels or
    predictions (:func:`miou_of`, accumulated over batches)."""
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for i, out in _logits(model, x, 100):
        conf += _confusion(out.argmax(1), y[i:i + out.shape[0]], num_classes)
    return _mean_iou(conf)


def score_top1(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """``{"top1": ...}`` of classifier ``model`` on raw eval ``data`` ``(x, y)`` (normalised here), to 4 places."""
    return {"top1": round(top1(model, *data), 4)}


def score_miou(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """``{"miou": ...}`` of segmenter ``model`` on raw eval ``data`` ``(x, label maps)``, to 4 places."""
    return {"miou": round(miou(model, *data), 4)}


# mosaic-det's small / medium / large split, box areas in px²: item sides are log-uniform over 14-56 px
# (prunekit.data.detection.SIZE_RANGE), so 22 and 35 px (14 * 4^(1/3), 14 * 4^(2/3)) cut them into thirds;
# COCO's bounds scaled to the 112 px canvas (5.6 and 16.8 px) would leave "small" empty
DET_AREA_BOUNDS = (22.0 ** 2, 35.0 ** 2)


def score_map(model: nn.Module, data: tuple[torch.Tensor, ...], batch: int = 100,
              area_bounds: tuple[float, float] | None = DET_AREA_BOUNDS) -> dict:
    """COCO box mAP (pycocotools; :mod:`prunekit.zoo.coco_map`) of a CenterNet-style detector on raw
    eval ``data`` ``(x, boxes, classes, ignore)``: ``map`` (@[.5:.95]), ``map50``, ``map75`` and the
    small / medium / large split (``area_bounds`` in px², default :data:`DET_AREA_BOUNDS`; ``None``:
    COCO's scaled to the canvas), to 4 places."""
    from prunekit.data.detection import det_targets
    from prunekit.zoo.coco_map import coco_map
    from prunekit.zoo.detvit import decode
    x, boxes, classes, ignore = data
    was = model.training
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # the eval data goes where the model is
    dets = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            dets += [{k: v.cpu() for k, v in d.items()} for d in decode(model(normalize(x[i:i + batch]).to(device)))]
    model.train(was)
    return coco_map(dets, det_targets(boxes, classes, ignore), size=x.shape[-1], area_bounds=area_bounds)


def _eval_data(name: str, limit: int | None):
    """The first ``limit`` eval samples of zoo model ``name`` (all without): ``(x, y)``, or sentences for minilm."""
    e = entry(name)
    return e.eval_data(limit=limit, n=e.eval_samples)


def evaluate_model(name: str, model: nn.Module, limit: int | None = None) -> dict:
    """The task metric of ``model`` on zoo task ``name`` (first ``limit`` eval samples, or all).

    The dict holds the entry's ``metric_key`` (``top1``, ``miou``, or for minilm ``fidelity`` to the
    dense model, with ``retrieval_top1``); an unknown ``name`` is a :class:`~prunekit.PruningError`.
    """
    return entry(name).score(model, _eval_data(name, limit))


def example_inputs(name: str) -> tuple[torch.Tensor]:
    """The example batch of vision zoo model ``name``: its first 8 eval samples, normalised, as a 1-tuple."""
    x = _eval_data(name, EXAMPLE_BATCH)[0]
    return (normalize(x),)


def load(name: str) -> Workload:
    """Load zoo model ``name`` (see ``NAMES``) from its shipped checkpoint, or its published weights, in
    eval mode; an unknown name is a :class:`~prunekit.PruningError` naming the known ones."""
    e = entry(name)
    if e.pretrained is not None:
        return e.pretrained()
    model = e.builder()
    model.load_state_dict(load_state(name))
    model.eval()
    return Workload(name, model, example_inputs(name), lambda m, limit=None: evaluate_model(name, m, limit),
                    e.task, e.metric_key, read_manifest().get(name, {}))
