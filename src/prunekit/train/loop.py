"""The one training loop: recovery fine-tunes, pruning during training, DynamicViT and the zoo's recipes.

:func:`fit` trains any ``nn.Module`` on any data:

- a ``DataLoader`` (under torchrun its sampler becomes a ``DistributedSampler``);
- a map-style ``Dataset`` (batched here, ``batch=``);
- a list or other re-iterable of batches (sharded by index under torchrun);
- a callable ``batches(generator) -> iterator`` that draws a fresh pass from a ``torch.Generator``
  (the zoo's augmented streams).

A batch is ``(inputs, targets)``, ``(inputs, targets, teacher_logits)`` (distillation at no teacher
cost per step) or a dict of keyword inputs with ``labels`` (Hugging Face). ``loss=`` replaces the
objective with your own ``loss(model, batch) -> loss | (loss, parts)``.

The recipe: AdamW (or SGD) with linear warm-up and cosine decay, gradient clipping, bf16 autocast
on CUDA, channels_last for conv nets on CUDA, a tqdm bar (rank 0 only) with the loss and images/s,
a checkpoint every epoch (model, optimizer, schedule, RNG, callback state) and ``resume=True`` to
continue a killed run to the same result. Callbacks (:mod:`prunekit.train.callbacks`) add loss terms
and act after optimizer steps: that is how pruning during training plugs in.

>>> import torch
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
>>> x = torch.randn(64, 4); y = (x[:, 0] > 0).long()
>>> batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
>>> res = fit(net, batches, epochs=20, lr=1e-2, progress=False)
>>> res.steps, res.world_size, evaluate(net, batches)["top1"] > 0.9
(80, 1, True)
"""
from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from prunekit.errors import PruningError
from prunekit.train import distributed as D
from prunekit.train.losses import distill_loss, outputs_of, task_loss

__all__ = ["TrainConfig", "FitResult", "Trainer", "fit", "evaluate", "batch_inputs"]


@dataclass
class TrainConfig:
    """Every knob of :func:`fit`; keyword arguments of :func:`fit` override these fields.

    ``epochs`` may be fractional. ``warmup_steps`` defaults to ``min(200, steps // 10)``.
    ``distill_weight`` mixes the label loss and the teacher's: ``(1 - w) * task + w * distill``
    (with no labels, the distillation term alone). ``budget_s``: time steps 10-60, then shorten the
    schedule so that the run fits. ``checkpoint_dir``: write a checkpoint there after every epoch
    (and every ``checkpoint_every`` steps if set); ``resume``: start from the newest one there.
    ``lr_scales``: ``{name prefix: factor}``; a parameter trains at ``lr * factor`` of its longest
    matching prefix (e.g. ``{"vit.": 0.01}`` for a slowly tuned backbone under new modules).
    """

    epochs: float = 1.0
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_steps: int | None = None
    clip_grad: float | None = 1.0
    label_smoothing: float = 0.0
    distill_weight: float = 0.5
    temperature: float = 2.0
    batch: int = 64
    steps_per_epoch: int | None = None
    seed: int = 0
    budget_s: float | None = None
    bf16: bool = True
    channels_last: bool | None = None
    find_unused_parameters: bool = False
    lr_scales: dict[str, float] | None = None
    progress: bool = True
    desc: str = "train"
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise PruningError("model", "train", f"epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise PruningError("model", "train", f"lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adamw", "sgd"):
            raise PruningError("model", "train", f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if not 0 <= self.distill_weight <= 1:
            raise PruningError("model", "train", f"distill_weight must lie in [0, 1], got {self.distill_weight}")
        if self.batch < 1:
            raise PruningError("model", "train", f"batch must be >= 1, got {self.batch}")
        if self.resume and not self.checkpoint_dir:
            raise PruningError("model", "resume training", "resume=True needs checkpoint_dir (where the run wrote)")


@dataclass
class FitResult:
    steps: int
    seconds: float
    last_loss: float
    last_lr: float = float("nan")
    epochs: float = 0.0
    world_size: int = 1
    images: int = 0
    resumed_from: int | None = None
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        """Training throughput over all ranks."""
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["images_per_s"] = round(self.images_per_s, 1)
        out["seconds"] = round(self.seconds, 2)
        return out


def batch_inputs(batch: Any) -> tuple[tuple, dict, Any, Any]:
    """Split a batch into ``(args, kwargs, targets, teacher_logits)``."""
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        kw = dict(batch)
        return (), kw, kw.pop("labels", None), kw.pop("teacher_logits", None)
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return (batch[0],), {}, None, None
        return (batch[0],), {}, batch[1], (batch[2] if len(batch) > 2 else None)
    return (batch,), {}, None, None


def _to(obj: Any, dev: torch.device, channels_last: bool = False) -> Any:
    if isinstance(obj, torch.Tensor):
        obj = obj.to(dev, non_blocking=True)
        return obj.contiguous(memory_format=torch.channels_last) if channels_last and obj.dim() == 4 \
            and obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _to(v, dev, channels_last) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(v, dev, channels_last) for v in obj)
    return obj


def _batch_size(args: tuple, kw: dict) -> int:
    for t in [*args, *kw.values()]:
        if isinstance(t, torch.Tensor):
            return int(t.shape[0])
    return 0


class _Source:
    """Epoch by epoch batches from any of :func:`fit`'s data forms, reproducible from ``(seed, epoch)``."""

    def __init__(self, data: Any, cfg: TrainConfig):
        rank, size = D.world()
        self.gen: torch.Generator | None = None
        self.epoch_state: torch.Tensor | None = None
        self.kind = "iterable"
        if isinstance(data, DataLoader):
            self.kind = "loader"
            if size > 1 and not isinstance(data.sampler, DistributedSampler):
                shuffle = isinstance(data.sampler, RandomSampler)
                data = DataLoader(data.dataset, batch_size=data.batch_size, drop_last=data.drop_last,
                                  sampler=DistributedSampler(data.dataset, size, rank, shuffle=shuffle, seed=cfg.seed),
                                  num_workers=data.num_workers, collate_fn=data.collate_fn,
                                  pin_memory=data.pin_memory)
        elif isinstance(data, Dataset) and hasattr(data, "__len__"):
            self.kind = "loader"
            sampler = DistributedSampler(data, size, rank, shuffle=True, seed=cfg.seed) if size > 1 else None
            data = DataLoader(data, batch_size=cfg.batch, shuffle=sampler is None, sampler=sampler, drop_last=True)
        elif callable(data) and not hasattr(data, "__iter__"):
            self.kind = "stream"
            self.gen = torch.Generator().manual_seed(cfg.seed + 1009 * rank)  # each rank draws its own stream
        elif not hasattr(data, "__iter__") or isinstance(data, Iterator):
            raise PruningError("data", "train", "give a DataLoader, a Dataset, a list of batches or a callable "
                               "batches(generator); a one-shot iterator cannot be re-read each epoch")
        self.data, self.rank, self.size, self.seed = data, rank, size, cfg.seed
        self.length = self._length(cfg)

    def _length(self, cfg: TrainConfig) -> int:
        if cfg.steps_per_epoch:
            return int(cfg.steps_per_epoch)
        if self.kind == "stream":
            raise PruningError("data", "train", "a callable batches(generator) has no length: give steps_per_epoch")
        try:
            n = len(self.data)
        except TypeError:
            raise PruningError("data", "train", "the data has no len(): give steps_per_epoch") from None
        if self.kind == "iterable" and self.size > 1:
            n = len(range(self.rank, n, self.size))
        if n < 1:
            raise PruningError("data", "train", "the training data holds no batch (empty, or fewer samples than "
                               "one batch)")
        return n

    def epoch(self, e: int) -> Iterator:
        """The batches of epoch ``e``; the order depends on ``(seed, e)`` only (resumable)."""
        if self.kind == "stream":
            assert self.gen is not None
            self.epoch_state = self.gen.get_state()
            return iter(self.data(self.gen))
        if self.kind == "loader":
            sampler = getattr(self.data, "sampler", None)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(e)
            torch.manual_seed(self.seed * 100_003 + e)  # RandomSampler draws its permutation from it
            return iter(self.data)
        items = iter(self.data)
        return (b for i, b in enumerate(items) if i % self.size == self.rank) if self.size > 1 else items


def _autocast(dev: torch.device, cfg: TrainConfig):
    if dev.type == "cuda" and cfg.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    """The state of one :func:`fit` run; callbacks receive it.

    Useful to callbacks: ``model`` (the bare module, not the DDP wrapper), ``optimizer``, ``step``,
    ``epoch``, ``total_steps``, ``lr`` (the current learning rate), ``rank``/``world_size``,
    ``example_inputs`` (the first batch's inputs, for tracing), and :meth:`model_changed`, which a
    callback calls after it edits the model (``structure=True`` after a physical cut).
    """

    def __init__(self, model: nn.Module, data: Any, cfg: TrainConfig, teacher: nn.Module | None,
                 loss: Callable | None, callbacks: Sequence, device: str | torch.device | None):
        self.cfg, self.teacher, self.custom_loss = cfg, teacher, loss
        self.callbacks = list(callbacks)
        self.device = D.setup(device if device is not None else _model_device(model))
        self.rank, self.world_size = D.world()
        self.model = model.to(self.device)
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else (
            self.device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()))
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(self.device).eval().requires_grad_(False)
        self.source = _Source(data, cfg)
        self.steps_per_epoch = self.source.length
        self.total_steps = max(1, int(cfg.epochs * self.steps_per_epoch))
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(200, self.total_steps // 10)
        self.step, self.epoch, self.in_epoch = 0, 0, 0
        self.lr = cfg.lr
        self.example_inputs: tuple | dict | None = None
        self._sync: str | None = None
        self.optimizer = self._optimizer()
        self.wrapped = D.wrap(self.model, self.device, cfg.find_unused_parameters)

    # -- optimizer and schedule -------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise PruningError("model", "train", "no parameter requires a gradient: nothing to train")
        scales = self.cfg.lr_scales or {}

        def scale(n: str) -> float:
            hits = [k for k in scales if n.startswith(k)]
            return float(scales[max(hits, key=len)]) if hits else 1.0
        groups = []
        for factor in sorted({scale(n) for n, _ in named}):
            decay = [p for n, p in named if scale(n) == factor and p.ndim > 1 and "pos_embed" not in n]
            no_decay = [p for n, p in named if scale(n) == factor and (p.ndim <= 1 or "pos_embed" in n)]
            groups += [{"params": ps, "weight_decay": wd, "lr_scale": factor}
                       for ps, wd in ((decay, self.cfg.weight_decay), (no_decay, 0.0)) if ps]
        for g in groups:
            g["lr"] = self.cfg.lr * g["lr_scale"]
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum, nesterov=True)
        return torch.optim.AdamW(groups, lr=self.cfg.lr)

    def lr_at(self, s: int) -> float:
        """Linear warm-up to ``lr`` over the warm-up steps, then cosine decay to 0 at the last step."""
        t, w = self.total_steps, self.warmup
        if s < w:
            return self.cfg.lr * (s + 1) / w
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * min(s - w, t - w) / max(1, t - w)))

    def _set_lr(self) -> None:
        self.lr = self.lr_at(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr * g.get("lr_scale", 1.0)

    # -- callbacks ask for a re-sync ----------------------------------------------------------------
    def model_changed(self, structure: bool = False) -> None:
        """Tell the trainer the model was edited: re-broadcast rank 0's weights (and masks); with
        ``structure=True`` (a physical cut) also check every rank has the same shapes, rebuild the
        optimizer (the parameters are new tensors) and re-wrap the model in DDP."""
        self._sync = "structure" if structure or self._sync == "structure" else "values"

    def _apply_sync(self) -> None:
        kind, self._sync = self._sync, None
        if kind == "structure":
            D.check_same_structure(self.model)
            self.optimizer = self._optimizer()
            self._set_lr()
            self.wrapped = D.wrap(self.model, self.device, self.cfg.find_unused_parameters)  # DDP broadcasts rank 0
        elif kind == "values":
            D.broadcast_module(self.model)

    # -- the loss -------------------------------------------------------------------------------------
    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        if self.custom_loss is not None:
            res = self.custom_loss(self.wrapped, batch)
            return res if isinstance(res, tuple) else (res, {})
        args, kw, target, soft = batch_inputs(batch)
        out, kind = outputs_of(self.wrapped(*args, **kw))
        parts: dict[str, float] = {}
        loss = None
        if target is not None:
            loss = task_loss(out, target, self.cfg.label_smoothing)
            parts["task"] = float(loss.detach())
        if self.teacher is not None or soft is not None:
            if soft is None:
                with torch.no_grad():
                    soft, _ = outputs_of(self.teacher(*args, **kw))
            mask = kw.get("attention_mask") if kind == "hidden" else None
            dl = distill_loss(out, soft, kind, self.cfg.temperature, mask)
            parts["distill"] = float(dl.detach())
            w = self.cfg.distill_weight if loss is not None else 1.0
            loss = dl * w if loss is None else (1 - w) * loss + w * dl
        if loss is None:
            raise PruningError("data", "train", "batches carry no targets and there is no teacher: give labels "
                               "(x, y) or a teacher to distil from")
        return loss, parts

    # -- running ----------------------------------------------------------------------------------------
    def run(self) -> FitResult:
        from prunekit.train import checkpoint as ckpt
        cfg = self.cfg
        resumed = None
        if cfg.resume:
            resumed = ckpt.restore(self, cfg.checkpoint_dir)
        else:
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)  # Python-side augmentation (timm's random crops) draws from it
        self._start_step = self.step
        for cb in self.callbacks:
            cb.on_train_begin(self)
        if self._sync:
            self._apply_sync()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=cfg.desc, file=sys.stderr, mininterval=5,
                   disable=not cfg.progress or self.rank != 0)
        t0, images, loss_ema = time.perf_counter(), 0, float("nan")
        parts: dict[str, float] = {}
        self.wrapped.train()
        while self.step < self.total_steps:
            batches = self.source.epoch(self.epoch)
            skip, first = self.in_epoch, self.step
            for i, batch in enumerate(batches):
                if i < skip:
                    continue  # replaying a resumed epoch up to where its checkpoint was taken
                if skip and i == skip:
                    ckpt.restore_rng(self)
                batch = _to(batch, self.device, self.channels_last)
                if self.example_inputs is None:
                    args, kw, _, _ = batch_inputs(batch)
                    self.example_inputs = kw if kw else args
                self._set_lr()
                with _autocast(self.device, cfg):
                    loss, parts = self.compute_loss(batch)
                    for cb in self.callbacks:
                        term = cb.loss_term(self)
                        if term is not None:
                            loss = loss + term
                if not torch.isfinite(loss):
                    raise PruningError("model", "train", f"the loss became {float(loss.detach())} at step "
                                       f"{self.step}; lower the learning rate or check the data")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.optimizer.step()
                self.step += 1
                self.in_epoch = i + 1
                args, kw, _, _ = batch_inputs(batch)
                images += _batch_size(args, kw)
                for cb in self.callbacks:
                    cb.on_step_end(self)
                if self._sync:
                    self._apply_sync()
                value = float(loss.detach())
                loss_ema = value if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * value
                bar.update(1)
                if bar.n % 10 == 0 or self.step == self.total_steps:
                    rate = images * self.world_size / max(1e-9, time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{loss_ema:.3f}", img_s=f"{rate:.0f}")
                self._budget(t0, bar)
                if cfg.checkpoint_dir and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 \
                        and self.step < self.total_steps:
                    ckpt.save(self, cfg.checkpoint_dir)
                if self.step >= self.total_steps:
                    break
            else:
                if self.step == first:
                    raise PruningError("data", "train", f"epoch {self.epoch} yielded no batch to train on")
                self._end_epoch(ckpt)
                continue
            if self.in_epoch >= self.steps_per_epoch:
                self._end_epoch(ckpt)
            break
        bar.close()
        for cb in self.callbacks:
            cb.on_train_end(self)
        if self._sync:
            self._apply_sync()
        D.broadcast_module(self.model)  # BatchNorm statistics too: each rank's last forward updated its own
        if cfg.checkpoint_dir:
            ckpt.save(self, cfg.checkpoint_dir, final=True)
        self.model.eval()
        seconds = time.perf_counter() - t0
        return FitResult(self.step, seconds, loss_ema, self.lr, round(self.step / self.steps_per_epoch, 4),
                         self.world_size, int(D.all_sum(images)), resumed, parts)

    def _end_epoch(self, ckpt) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(self)
        if self._sync:
            self._apply_sync()
        self.epoch, self.in_epoch = self.epoch + 1, 0
        if self.cfg.checkpoint_dir and self.step < self.total_steps:
            ckpt.save(self, self.cfg.checkpoint_dir)

    def _budget(self, t0: float, bar) -> None:
        """With ``budget_s``: time steps 10-60, then shorten the schedule to fit the budget."""
        budget = self.cfg.budget_s
        if not budget:
            return
        done = self.step - self._start_step
        if done == 10:
            self._probe = time.perf_counter()
        elif done == 60:
            per_step = max(1e-6, (time.perf_counter() - self._probe) / 50)
            left = budget - (time.perf_counter() - t0)
            self.total_steps = max(self.step, min(self.total_steps, self.step + int(left / per_step)))
            self.warmup = min(self.warmup, self.total_steps // 10)
            bar.total = self.total_steps


def _model_device(model: nn.Module) -> torch.device | None:
    p = next(model.parameters(), None)
    return None if p is None or p.device.type == "cpu" else p.device


def fit(model: nn.Module, data: Any, config: TrainConfig | None = None, *, teacher: nn.Module | None = None,
        loss: Callable | None = None, callbacks: Iterable = (), device: str | torch.device | None = None,
        **overrides) -> FitResult:
    """Train ``model`` in place on ``data`` (see the module docstring); returns a :class:`FitResult`.

    ``overrides`` are :class:`TrainConfig` fields (``epochs=3, lr=1e-4, ...``). ``teacher``: a frozen
    model whose outputs are distilled into ``model`` (KL on logits, cosine on hidden states); it is
    frozen during the run and its ``requires_grad`` flags and mode are restored after. Under
    torchrun the model trains in DDP, one process per rank. The model is left in eval mode.
    """
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise PruningError("model", "train", f"unknown training option(s) {unknown}; known: {sorted(names)}")
    cfg = replace(config or TrainConfig(), **overrides)
    if teacher is None:
        return Trainer(model, data, cfg, teacher, loss, callbacks, device).run()
    # the teacher is frozen and put in eval mode for the run, and given back as it came
    flags, was = [p.requires_grad for p in teacher.parameters()], teacher.training
    try:
        return Trainer(model, data, cfg, teacher, loss, callbacks, device).run()
    finally:
        for p, flag in zip(teacher.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        teacher.train(was)


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, device: str | torch.device | None = None) -> dict[str, float]:
    """Top-1 accuracy of ``model`` on labelled ``data`` (any :func:`fit` form but a stream); under torchrun
    each rank takes every ``world_size``-th batch and the counts are all-reduced. Per-pixel logits count
    pixels. Returns ``{"top1": ..., "samples": N}``."""
    rank, size = D.world()
    dev = torch.device(device) if device is not None else (_model_device(model) or torch.device("cpu"))
    if isinstance(data, Dataset) and not isinstance(data, DataLoader) and hasattr(data, "__len__"):
        data = DataLoader(data, batch_size=256)
    was = model.training
    model.eval()
    correct = total = 0
    try:
        for i, batch in enumerate(data):
            if i % size != rank:
                continue
            args, kw, target, _ = batch_inputs(_to(batch, dev))
            if target is None:
                raise PruningError("data", "evaluate", "evaluation batches need targets")
            out, _ = outputs_of(model(*args, **kw))
            correct += int((out.argmax(1) == target).sum())
            total += int(target.numel())
    finally:
        model.train(was)
    correct, total = D.all_sum(correct), D.all_sum(total)
    return {"top1": round(correct / total, 4) if total else float("nan"), "samples": int(total)}
