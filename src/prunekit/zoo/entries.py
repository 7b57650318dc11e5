"""One :class:`ZooEntry` per reference model: every per-model fact of the zoo, in one table.

An entry says what a zoo model is (task, metric), how to get it (a builder plus a shipped checkpoint,
or published weights), how it was trained (recipe, continuation stage, heads added later), where
its eval and calibration data come from, its built-in fine-tune and how many eval samples the demo
uses. The older per-fact tables (``registry.TASKS``, ``models.BUILDERS``, ``train.RECIPES``,
``finetune.FINETUNE_LR``, ``demo.LIMITS`` ...) are views of :data:`ENTRIES`.

Functions are named by a :class:`Ref` (``"module:attribute"``) and imported on their first call, so
reading an entry imports neither the training recipes nor ``transformers``.

>>> e = entry("fmnist-vit")
>>> e.task, e.metric_key, e.eval_samples, e.finetune_lr, e.demo_limit
('classification', 'top1', 10000, 0.0003, 1000)
>>> e.builder
Ref('prunekit.zoo.models:build_vit')
>>> entry("minilm").builder is None, entry("minilm").recipe is None   # published weights, no recipe
(True, True)
>>> entry("resnet-9000")   # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
prunekit.zoo.entries.ZooLookupError: resnet-9000: cannot find the zoo model: unknown zoo model; choose one of ...
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prunekit.errors import PruningError

__all__ = ["ZooEntry", "Ref", "ENTRIES", "entry", "ZooLookupError"]


@dataclass(frozen=True)
class Ref:
    """A function named ``"module:attribute"``, imported when first called (a lazy, comparable callable).

    >>> Ref("math:hypot")(3, 4)
    5.0
    """

    target: str

    def resolve(self) -> Callable[..., Any]:
        """The function itself (imports its module)."""
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Ref({self.target!r})"


@dataclass(frozen=True)
class ZooEntry:
    """Everything prunekit knows about one reference model.

    ``metric_key``: the headline key of the dict that ``score`` returns. ``eval_data(limit=, n=)``: the
    first ``limit`` (all without) of the ``n = eval_samples`` eval samples, ``(x, y)`` or sentences;
    ``score(model, data)``: the metric dict on them. ``builder()``: a freshly initialised model (its
    weights ship as a checkpoint); ``pretrained()``: a ready :class:`~prunekit.zoo.Workload` with
    published weights instead. ``recipe(seed, quick, **kw) -> (model, route)``: how prunekit trains it;
    ``more``: the stage that continues a shipped checkpoint; ``new_heads``: state-dict prefixes of heads
    added after its checkpoint shipped. ``calibration(n)``: calibration batches from a split disjoint
    from the eval one (``None``: use the example inputs). ``finetune_lr`` / ``finetune_weight_decay``:
    the built-in recovery fine-tune (``None``: there is none). ``demo_limit``: eval samples in the demo.
    ``variant_of``: the zoo model this one is a compressed form of (the demo shows it as a row of that
    model, measured against it, not as a model of its own).
    """

    name: str
    task: str
    metric_key: str
    eval_data: Callable[..., Any]
    eval_samples: int
    score: Callable[..., dict]
    demo_limit: int
    builder: Callable[[], Any] | None = None
    pretrained: Callable[[], Any] | None = None
    recipe: Callable[..., tuple] | None = None
    more: Callable[..., str] | None = None
    new_heads: tuple[str, ...] = ()
    calibration: Callable[..., list] | None = None
    finetune_lr: float | None = None
    finetune_weight_decay: float | None = None
    variant_of: str | None = None

    def __post_init__(self) -> None:
        if (self.builder is None) == (self.pretrained is None):
            raise ValueError(f"zoo entry {self.name!r}: give exactly one of builder and pretrained")
        if self.recipe is not None and self.builder is None:
            raise ValueError(f"zoo entry {self.name!r}: a recipe trains a built model; give a builder")
        if (self.finetune_lr is None) != (self.finetune_weight_decay is None):
            raise ValueError(f"zoo entry {self.name!r}: the built-in fine-tune needs both its lr and weight decay")


class ZooLookupError(PruningError, KeyError):
    """No zoo model has this name, or it lacks what was asked (a recipe, a continuation stage).

    A :class:`KeyError` too, as the lookups it replaces raised one.
    """

    __str__ = PruningError.__str__


_FMNIST = {"eval_data": Ref("prunekit.zoo.splits:fmnist_test"), "eval_samples": 10000,
           "score": Ref("prunekit.zoo.registry:score_top1"),
           "calibration": Ref("prunekit.zoo.splits:fmnist_calibration")}

ENTRIES: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry("fmnist-resnet", "classification", "top1", **_FMNIST, demo_limit=2000,
             builder=Ref("prunekit.zoo.models:build_resnet"), recipe=Ref("prunekit.zoo.train:recipe_resnet"),
             finetune_lr=1e-3, finetune_weight_decay=5e-4),
    ZooEntry("fmnist-vit", "classification", "top1", **_FMNIST, demo_limit=1000,
             builder=Ref("prunekit.zoo.models:build_vit"), recipe=Ref("prunekit.zoo.train:recipe_vit"),
             more=Ref("prunekit.zoo.train:more_vit"), finetune_lr=3e-4, finetune_weight_decay=0.05),
    ZooEntry("fmnist-vit-dynamic", "classification", "top1", **_FMNIST, demo_limit=1000,
             builder=Ref("prunekit.zoo.train_dynamic:build_vit_dynamic"),
             recipe=Ref("prunekit.zoo.train_dynamic:recipe_vit_dynamic"),
             more=Ref("prunekit.zoo.train_dynamic:more_vit_dynamic"), variant_of="fmnist-vit"),
    ZooEntry("mosaic-segvit", "segmentation", "miou", eval_data=Ref("prunekit.zoo.splits:mosaic_test"),
             eval_samples=2000, score=Ref("prunekit.zoo.registry:score_miou"), demo_limit=300,
             builder=Ref("prunekit.zoo.models:build_segvit"), recipe=Ref("prunekit.zoo.train:recipe_segvit"),
             more=Ref("prunekit.zoo.train:more_segvit"), new_heads=("refine.",)),
    ZooEntry("mosaic-det", "detection", "map", eval_data=Ref("prunekit.zoo.splits:det_test"), eval_samples=2000,
             score=Ref("prunekit.zoo.registry:score_map"), demo_limit=300,
             builder=Ref("prunekit.zoo.detvit:build_detvit"), recipe=Ref("prunekit.zoo.train_det:recipe_det"),
             more=Ref("prunekit.zoo.train_det:more_det")),
    ZooEntry("motion-vivit", "video", "top1", eval_data=Ref("prunekit.zoo.splits:motion_test"),
             eval_samples=2000, score=Ref("prunekit.zoo.registry:score_top1"), demo_limit=300,
             builder=Ref("prunekit.zoo.models:build_vivit"), recipe=Ref("prunekit.zoo.train:recipe_vivit"),
             more=Ref("prunekit.zoo.train:more_vivit")),
    ZooEntry("motion-vivit-pan", "video", "top1", eval_data=Ref("prunekit.zoo.splits:motion_pan_test"),
             eval_samples=2000, score=Ref("prunekit.zoo.registry:score_top1"), demo_limit=300,
             builder=Ref("prunekit.zoo.models:build_vivit"), recipe=Ref("prunekit.zoo.train_pan:recipe_vivit_pan"),
             more=Ref("prunekit.zoo.train_pan:more_vivit_pan")),
    ZooEntry("minilm", "sentence-embedding", "fidelity", eval_data=Ref("prunekit.zoo.minilm:eval_sentences"),
             eval_samples=1000, score=Ref("prunekit.zoo.minilm:score"), demo_limit=300,
             pretrained=Ref("prunekit.zoo.minilm:load_minilm"),
             calibration=Ref("prunekit.zoo.minilm:calibration_batches")),
)}


def entry(name: str) -> ZooEntry:
    """The :class:`ZooEntry` of zoo model ``name``; an unknown name is a :class:`~prunekit.PruningError`
    (also a ``KeyError``) naming the known ones."""
    try:
        return ENTRIES[name]
    except KeyError:
        raise ZooLookupError(name, "find the zoo model",
                              f"unknown zoo model; choose one of {', '.join(ENTRIES)}") from None
