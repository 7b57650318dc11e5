"""Training recipes for the reference models: CPU-friendly, seeded, with a progress bar.

``prunekit zoo train NAME`` runs the recipe and writes ``checkpoints/NAME.safetensors`` plus a
manifest entry (metric, seed, command, sha256, route). The ViTs take the cheaper route the
Foundation issue allows: most epochs at 49 tokens (a coarser patch or a single frame), then a
fine-tune at 196 tokens after transferring the weights (:mod:`prunekit.zoo.transfer`). The route is
recorded in the manifest.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from prunekit.data import load_fashion_mnist, load_mosaic, load_motion, motion_items, normalize
from prunekit.data.mosaic import on_texture
from prunekit.data.mosaic_stream import draw_params, render
from prunekit.train.loop import FitResult  # the trainer's result (steps, seconds, last loss, last lr)
from prunekit.zoo import models
from prunekit.zoo.entries import ENTRIES, ZooLookupError
from prunekit.zoo.store import save_checkpoint
from prunekit.zoo.transfer import decoder_from_head, inflate_to_video, load_adding_heads, transfer_vit

__all__ = ["train_model", "fit", "More", "option_flag", "RECIPES", "MORE", "SUBSET"]

SUBSET = 500  # the fixed eval subset whose metric the tests check

Batches = Callable[[torch.Generator], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def _augment(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shift (pad + crop) and horizontal flip, the same for a whole sample (works for video)."""
    n = x.shape[0]
    h, w = x.shape[-2:]
    xp = nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
    x = xp[..., dy:dy + h, dx:dx + w]
    flip = torch.rand(n, generator=g) < 0.5
    x[flip] = x[flip].flip(-1)
    return x


def _random_frames(clips: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random frame of each clip: ``(B, C, T, H, W)`` -> ``(B, C, H, W)``."""
    t = torch.randint(0, clips.shape[2], (clips.shape[0],), generator=g)
    return clips[torch.arange(clips.shape[0]), :, t]


def _random_crops(x: torch.Tensor, y: torch.Tensor, size: int, g: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``size`` px window of each image ``(B, C, H, W)`` and of its label map ``(B, H, W)``."""
    offs = torch.stack([torch.randint(0, x.shape[-2] - size + 1, (x.shape[0],), generator=g),
                        torch.randint(0, x.shape[-1] - size + 1, (x.shape[0],), generator=g)], 1).tolist()
    return (torch.stack([xi[:, a:a + size, b:b + size] for xi, (a, b) in zip(x, offs, strict=True)]),
            torch.stack([yi[a:a + size, b:b + size] for yi, (a, b) in zip(y, offs, strict=True)]))


def _shift_pair(x: torch.Tensor, y: torch.Tensor, pad: int, g: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random shift of up to ``pad`` px for images ``(B, C, H, W)`` and label maps ``(B, H, W)``.

    What moves in from outside the canvas is black in the image and background (0) in the labels.
    """
    h, w = x.shape[-2:]
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
    x, y = nn.functional.pad(x, (pad,) * 4), nn.functional.pad(y, (pad,) * 4)
    return x[..., dy:dy + h, dx:dx + w], y[..., dy:dy + h, dx:dx + w]


def _seg_augment(x: torch.Tensor, y: torch.Tensor, shift: int, g: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw images ``(B, C, H, W)`` and label maps ``(B, H, W)``: shifted together by up to ``shift`` px
    (none at 0), images normalised, then the same random horizontal flip for each pair."""
    if shift:
        x, y = _shift_pair(x, y, shift, g)
    x, y = normalize(x), y.clone()
    flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
    return x, y


def _loader(x: torch.Tensor, y: torch.Tensor, batch: int, augment: bool, seg: bool = False,
            textured: bool = False, soft: torch.Tensor | None = None, frames: bool = False,
            crop: int | None = None, seg_shift: int = 0) -> Batches:
    """Shuffled batches; ``textured`` pastes each item on a fresh mosaic-texture crop (:func:`on_texture`).

    ``soft``: per-sample teacher logits (:func:`teacher_logits`), yielded as a third element.
    ``frames``: ``x`` holds clips, and each batch takes one random frame of each (an image batch).
    ``crop``: ``y`` holds label maps, and each batch takes a random ``crop`` px window of each pair.
    ``seg_shift``: with ``seg`` and ``augment``, also shift each batch's images and label maps together
    by up to that many px (:func:`_shift_pair`).
    """
    def batches(g: torch.Generator):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            xb = on_texture(x[idx], g) if textured else _random_frames(x[idx], g) if frames else x[idx]
            yb = y[idx]
            if crop:
                xb, yb = _random_crops(xb, yb, crop, g)
            if augment and seg:
                xb, yb = _seg_augment(xb, yb, seg_shift, g)
            else:
                xb = normalize(xb)
                if augment:
                    xb = _augment(xb, g)
            yield (xb, yb) if soft is None else (xb, yb, soft[idx])
    return batches


def _stream(items: torch.Tensor, labels: torch.Tensor, batch: int, steps: int, shift: int = 0,
            device: str | torch.device | None = None) -> Batches:
    """``steps`` batches of new mosaics per pass, rendered on ``device`` (:mod:`prunekit.data.mosaic_stream`).

    Each pass draws from the generator it is given, so no mosaic comes twice (no fixed set to memorise);
    images and label maps get the same flip (and, with ``shift``, the same shift) as :func:`_loader`'s.
    """
    dev = torch.device(device) if device is not None else items.device
    items, labels = items.to(dev), labels.to(dev)

    def batches(g: torch.Generator):
        for _ in range(steps):
            yield _seg_augment(*render(draw_params(batch, g, items.shape[0]), items, labels), shift, g)
    return batches


def fit(model: nn.Module, batches: Batches, epochs: float, lr: float, steps_per_epoch: int,
        seed: int = 0, weight_decay: float = 0.05, label_smoothing: float = 0.1, desc: str = "train",
        teacher: nn.Module | None = None, distill: float = 0.5, temperature: float = 2.0,
        device: str | torch.device | None = None, budget_s: float | None = None,
        regularizer: Callable[[], torch.Tensor] | None = None,
        on_step: Callable[[int], object] | None = None, checkpoint_dir: str | None = None,
        checkpoint_every: int | None = None, resume: bool = False) -> FitResult:
    """The recipes' call into :func:`prunekit.train.fit` (AdamW, linear warm-up and cosine decay,
    clipping at 1, label smoothing); ``epochs`` may be fractional.

    With a ``teacher`` (a trained model of the same task, kept frozen), the loss mixes the label loss
    with ``distill`` times the soft-target KL divergence at ``temperature`` (Hinton et al.; DeiT's
    recipe for data-starved ViTs). Batches of three carry the teacher's logits precomputed
    (:func:`teacher_logits`), which distils at no teacher cost per step.

    ``device``: train there (an explicit CUDA device runs under bf16 autocast); the model stays there
    afterwards. ``budget_s``: time steps 10-60, then shorten the run so that it fits the budget.
    ``regularizer``: a term added to every step's loss; ``on_step``: called with the step count after
    every optimizer step. ``checkpoint_dir``, ``checkpoint_every``, ``resume``: as
    :class:`prunekit.train.TrainConfig`'s (a stopped run picks up where its last checkpoint was).
    """
    from prunekit.train import LossTerm, OnStep
    from prunekit.train import fit as train_fit
    callbacks = ([LossTerm(regularizer)] if regularizer is not None else []) + \
        ([OnStep(on_step)] if on_step is not None else [])
    dev = device if device is not None else next(model.parameters()).device
    return train_fit(model, batches, epochs=epochs, lr=lr, steps_per_epoch=steps_per_epoch, seed=seed,
                     weight_decay=weight_decay, label_smoothing=label_smoothing, desc=desc, teacher=teacher,
                     distill_weight=distill, temperature=temperature, budget_s=budget_s, callbacks=callbacks,
                     device=dev, channels_last=False, checkpoint_dir=checkpoint_dir,
                     checkpoint_every=checkpoint_every, resume=resume)


def _fmnist(n: int | None = None):
    x, y = load_fashion_mnist("train")
    return (x[:n], y[:n]) if n else (x, y)


def recipe_resnet(seed: int, quick: bool, start_from: dict | None = None) -> tuple[nn.Module, str]:
    """3 epochs at lr 3e-3, 1 at lr 1e-3 (shift+flip augmentation), then 1 at lr 3e-4 without augmentation.

    Each stage gets a fresh AdamW + cosine schedule. ``start_from``: the state after stages 1-2 (skips
    them; stage 3 then gives the same model as a full run).
    """
    x, y = _fmnist(2048 if quick else None)
    model = models.build_resnet()
    spe = x.shape[0] // 128
    e1, e2, e3 = (0.2, 0.1, 0.1) if quick else (3, 1, 1)
    if start_from is None:
        fit(model, _loader(x, y, 128, True), e1, 3e-3, spe, seed, 5e-4, desc="fmnist-resnet stage 1")
        fit(model, _loader(x, y, 128, True), e2, 1e-3, spe, seed + 1, 5e-4, desc="fmnist-resnet stage 2")
    else:
        model.load_state_dict(start_from)
    fit(model, _loader(x, y, 128, False), e3, 3e-4, spe, seed + 2, 5e-4, desc="fmnist-resnet stage 3")
    return model, (f"{e1} epochs at lr 3e-3 then {e2} at lr 1e-3 (shift+flip augmentation), then {e3} at "
                   "lr 3e-4 without augmentation; batch 128, AdamW + cosine per stage"
                   + (" (stage 3 resumed from the stage-2 checkpoint)" if start_from else ""))


def _teacher() -> nn.Module:
    """fmnist-resnet, the frozen teacher for distillation (its shipped checkpoint)."""
    from prunekit.zoo.store import load_state
    teacher = models.build_resnet()
    teacher.load_state_dict(load_state("fmnist-resnet"))
    return teacher.eval()


def teacher_logits(x: torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """fmnist-resnet's logits for raw images ``x`` (normalised here), computed once before training.

    Distilling from them costs nothing per step; the small shifts and flips of :func:`_augment` are
    applied to the student's input only (the teacher's answer for the unaugmented image is the target).
    ``device``: where the teacher runs; the logits come back on the CPU.
    """
    from prunekit.zoo.registry import _logits
    return torch.cat([out for _, out in _logits(_teacher().to(device or "cpu"), x, batch=500)])


_VIT_DISTILL = {"label_smoothing": 0.0, "distill": 0.5, "temperature": 2.0}


def recipe_vit(seed: int, quick: bool, start_from: dict | None = None) -> tuple[nn.Module, str]:
    """11 epochs at 49 tokens; PI-resize to 196 tokens; 1 epoch at 196; both stages distilled from fmnist-resnet.

    ``start_from``: the 196-token state right after the transfer (skips the 49-token stage).
    """
    from prunekit.zoo.registry import evaluate_model
    x, y = _fmnist(1024 if quick else None)
    e1, e2 = (0.1, 0.1) if quick else (11, 1)
    soft = teacher_logits(x)
    fine, coarse_top1 = models.build_vit(2), ""
    if start_from is None:
        coarse = models.build_vit(4)
        fit(coarse, _loader(x, y, 128, True, soft=soft), e1, 1e-3, x.shape[0] // 128, seed,
            desc="fmnist-vit 49 tokens", **_VIT_DISTILL)
        coarse_top1 = f" (test top1 {evaluate_model('fmnist-vit', coarse, 256 if quick else None)['top1']:.4f})"
        transfer_vit(coarse.state_dict(), fine, skip=())
    else:
        fine.load_state_dict(start_from)
    fit(fine, _loader(x, y, 64, True, soft=soft), e2, 3e-4, x.shape[0] // 64, seed + 1,
        desc="fmnist-vit 196 tokens", **_VIT_DISTILL)
    route = (f"{e1} epochs on {x.shape[0]} samples at 49 tokens (patch 4, batch 128, lr 1e-3){coarse_top1}, "
             f"then PI-resized patch embed + resampled pos embed and {e2} epoch at 196 tokens (batch 64, "
             "lr 3e-4); both stages shift+flip, no label smoothing, distilled from fmnist-resnet's logits "
             "precomputed on the unaugmented images (KL at T=2, weight 0.5)")
    return fine, route + (" (the 196-token stage resumed from the transferred state)" if start_from else "")


def textured_top1(model: nn.Module, n: int, seed: int) -> float:
    """Top-1 of an image classifier on the first ``n`` Fashion-MNIST test items pasted on mosaic textures."""
    from prunekit.zoo.registry import top1
    x, y = load_fashion_mnist("test")
    return top1(model, on_texture(x[:n], torch.Generator().manual_seed(seed)), y[:n])


def _segment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: float, lr: float, seed: int,
             desc: str, crop: int | None = None) -> None:
    """Train a segmenter on mosaics ``x`` with label maps ``y`` (batch 64, flip, no label smoothing).

    ``crop``: train on a random ``crop`` px window of each mosaic instead of the whole canvas.
    """
    fit(model, _loader(x, y, 64, True, seg=True, crop=crop), epochs, lr, x.shape[0] // 64, seed,
        label_smoothing=0.0, desc=desc)


_SEG_SAMPLES = 32000  # training mosaics of mosaic-segvit


def recipe_segvit(seed: int, quick: bool, start_from: dict | None = None, seg_epochs: float = 1.5,
                  seg_lr: float = 3e-4, seg_samples: int = _SEG_SAMPLES) -> tuple[nn.Module, str]:
    """Classify textured items, segment 28 px mosaic crops, then whole mosaics; all 8 blocks, patch 4.

    1. The encoder learns Fashion-MNIST items pasted on mosaic textures at 49 tokens, distilled from
       fmnist-resnet's logits for the clean item (the mosaic's failure was recognising the garment).
       It averages the patch tokens (no class token), so every patch token learns its item's class,
       and its head starts the decoder's item rows.
    2. A 49-token SegViT segments random 28 px windows of the training mosaics: a token covers 4x4 px
       as on the 56 px canvas, so it is the same model at a quarter of the tokens.
    3. Its weights go to the 196-token model (pos embed resampled 7x7 -> 14x14), which trains on
       whole mosaics. ``start_from``: the 196-token state after that transfer (skips stages 1-2).
    """
    from prunekit.zoo.registry import evaluate_model
    xi, yi = _fmnist(1024 if quick else None)
    e_pre, n_seg, e_crop, e_seg = (0.1, 512, 0.2, 0.1) if quick else (10, seg_samples, 16, seg_epochs)
    x, y = load_mosaic("train", n=n_seg, seed=seed)
    model = models.build_segvit(4)
    if start_from is None:
        pre = models.vit(28, 4, 96, 8, 4, 10, global_pool="avg", fc_norm=False)
        fit(pre, _loader(xi, yi, 128, True, textured=True, soft=teacher_logits(xi)), e_pre, 1e-3,
            xi.shape[0] // 128, seed, desc="mosaic-segvit items", **_VIT_DISTILL)
        n_t = 256 if quick else 2000
        pre_top1 = textured_top1(pre, n_t, seed + 5)
        crops = models.build_segvit(4, canvas=28)
        transfer_vit(pre.state_dict(), crops)
        decoder_from_head(pre.state_dict(), crops.decoder)
        _segment(crops, x, y, e_crop, 5e-4, seed + 1, "mosaic-segvit 28 px crops", crop=28)
        transfer_vit(crops.state_dict(), model, skip=())
        n_m = 256 if quick else 500
        crop_miou = evaluate_model("mosaic-segvit", model, n_m)["miou"]
        first = (f"{e_pre} epochs on {xi.shape[0]} Fashion-MNIST items pasted on mosaic textures at 49 tokens "
                 "(avg-pooled patch tokens, batch 128, lr 1e-3, shift+flip, distilled from fmnist-resnet's logits "
                 f"for the clean item: KL at T=2, weight 0.5; test top1 {pre_top1:.4f} on {n_t} textured test "
                 f"items); decoder item rows from its head, then {e_crop} epochs on random 28 px windows of "
                 f"{n_seg} mosaics at 49 tokens (batch 64, lr 5e-4, flip); pos embed resampled to 14x14 (mIoU "
                 f"{crop_miou:.4f} on the first {n_m} test mosaics right after); ")
    else:
        load_adding_heads(model, start_from, ("refine.",))
        first = "resumed from the transferred 196-token state; "
    _segment(model, x, y, e_seg, seg_lr, seed + 2, "mosaic-segvit")
    return model, (first + f"then {e_seg} epochs on the {n_seg} whole mosaics at 196 tokens (batch 64, AdamW "
                   f"lr {seg_lr:g}, flip, no label smoothing); the pixel-refinement head trained in every "
                   "segmentation stage")


def _motion_train(n: int, seed: int, device: str | torch.device | None = None, camera: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` training clips (``camera``: under camera motion), their labels, and fmnist-resnet's
    logits for each clip's clean item (the same items either way)."""
    x, y = load_motion("train", n=n, seed=seed, camera=camera)
    items = load_fashion_mnist("train")[0][motion_items("train", n, seed)]
    return x, y, teacher_logits(items, device)


def recipe_vivit(seed: int, quick: bool) -> tuple[nn.Module, str]:
    """Pre-train on single frames (49 tokens), inflate to tubelets (ViViT's image initialisation), then video.

    The frame stage draws a fresh random frame of every clip each epoch, so the image model sees each
    item at up to 8 positions. Both stages distil from fmnist-resnet's logits for the clip's clean
    28 px item, computed once (:func:`teacher_logits`), so the teacher costs nothing per step.
    """
    from prunekit.zoo.registry import evaluate_model
    n, e_pre, e_vid = (512, 0.2, 0.1) if quick else (60000, 20, 4)
    x, y, soft = _motion_train(n, seed)
    pre = models.vit(56, 8, 64, 8, 4, 10)
    fit(pre, _loader(x, y, 128, True, soft=soft, frames=True), e_pre, 1e-3, n // 128, seed,
        desc="motion-vivit frames", **_VIT_DISTILL)
    model = inflate_to_video(pre.state_dict(), models.build_vivit())
    inflated = evaluate_model("motion-vivit", model, 256 if quick else None)["top1"]
    fit(model, _loader(x, y, 64, True, soft=soft), e_vid, 4e-4, n // 64, seed + 1, desc="motion-vivit",
        **_VIT_DISTILL)
    return model, (f"pre-trained {e_pre} epochs on single frames of {n} clips (a fresh random frame of each "
                   "clip per epoch) at 49 tokens (patch 8, lr 1e-3, batch 128), inflated to 2x8x8 tubelets "
                   "(kernel repeated / 2, spatial pos embed tiled over time, frame classifier kept: test "
                   f"top1 {inflated:.4f} as inflated), then {e_vid} epochs on the {n} clips at 196 tokens "
                   "(batch 64, lr 4e-4); both "
                   "stages shift+flip, no label smoothing, distilled from fmnist-resnet's logits for each "
                   "clip's clean item (KL at T=2, weight 0.5)")


# the training recipe of each zoo model that prunekit trains (a view of its ZooEntry)
RECIPES: dict[str, Callable[..., tuple[nn.Module, str]]] = {
    name: e.recipe for name, e in ENTRIES.items() if e.recipe is not None}


def option_flag(name: str) -> str:
    """The command-line flag of :class:`More` field ``name`` (``offset`` -> ``--sample-offset``)."""
    return {"epochs": "--more-epochs", "offset": "--sample-offset"}.get(name, f"--{name.replace('_', '-')}")


CHECKPOINT_EVERY = 200  # steps between the checkpoints of a continuation (:class:`More`), to resume a stopped one


@dataclass
class More:
    """How :data:`MORE` continues a shipped checkpoint; ``None`` fields keep the stage's own setting.

    ``samples``: training samples (generated sets such as mosaics and clips can grow beyond the
    recipe's); ``budget_minutes``: shorten the run to fit (:func:`fit`'s ``budget_s``); ``shift``:
    mosaic-segvit only, shift mosaic and label map together by up to that many px (the classifiers'
    stages already shift by 2); ``offset``: mosaic-segvit only, take the training mosaics from this
    index on (past the sets earlier stages trained on, so every mosaic is new to the model);
    ``decoder_only``: mosaic-segvit only, train the decoder and its pixel-refinement head with the
    encoder frozen; ``stream``: mosaic-segvit only, draw new mosaics for every batch instead of a fixed
    set (``samples`` is then the epoch length; rendered on ``device``).

    Without ``budget_minutes`` the run is resumable: it checkpoints every :data:`CHECKPOINT_EVERY`
    steps into a :func:`prunekit.zoo.store.train_dir` folder keyed by every setting and by the
    checkpoint it starts from (``start``, set by :func:`_continue`), and the same command run again
    picks up a stopped run there. A time budget reshapes the schedule from the timing of the first
    steps, which a resumed run would not repeat, so a budgeted run is not checkpointed.
    """

    epochs: float
    device: str | None = None
    batch: int | None = None
    lr: float | None = None
    samples: int | None = None
    budget_minutes: float | None = None
    shift: int | None = None
    offset: int | None = None
    decoder_only: bool | None = None
    stream: bool | None = None
    start: str = ""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch", "lr", "samples", "budget_minutes", "shift", "offset"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"continuation: {option_flag(name)} must be positive, got {value}")
        if self.device is not None:
            try:
                kind = torch.device(self.device).type
            except RuntimeError as err:
                raise ValueError(f"continuation: --device {self.device!r} is not a torch device ({err})") from None
            if kind == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"continuation: --device {self.device} but no CUDA device is visible; "
                                 "drop --device to train on the CPU")
        if self.stream and self.offset:
            raise ValueError("continuation: --stream draws new mosaics for every batch; --sample-offset numbers a "
                             "fixed set, so give one of them")

    def run(self, model: nn.Module, batches: Batches, batch: int, default_lr: float, n: int,
            seed: int, desc: str, trainer: Callable[..., FitResult] | None = None, **fit_kw) -> tuple[str, float]:
        """Fit on ``batches`` of ``batch``; return the route's words (``'E more epochs ... on DEVICE'``) and the lr.

        ``trainer``: called as :func:`fit` is (the default) and returning its result, for a stage
        that trains with its own objective (DynamicViT's)."""
        lr = self.lr or default_lr
        if n < batch:
            raise ValueError(f"continuation of {desc!r}: {n} training samples cannot fill one batch of {batch}; "
                             "raise --samples or lower --batch")
        resumable = {}
        if not self.budget_minutes:
            from prunekit.train.checkpoint import latest
            from prunekit.zoo.store import train_dir
            key = hashlib.sha256(json.dumps([asdict(self), batch, default_lr, n, seed, desc],
                                            sort_keys=True).encode()).hexdigest()[:12]
            folder = train_dir(f"{desc.replace(' ', '-')}-{key}")
            resumable = dict(checkpoint_dir=str(folder), checkpoint_every=CHECKPOINT_EVERY,
                             resume=latest(folder) is not None)
        res = (trainer or fit)(model, batches, self.epochs, lr, n // batch, seed, desc=desc, device=self.device,
                  budget_s=self.budget_minutes * 60 if self.budget_minutes else None, **resumable, **fit_kw)
        cut = res.steps < max(1, int(self.epochs * (n // batch)))
        done = (f"{res.steps / (n // batch):.2f} more epochs ({self.epochs:g} asked, cut to fit "
                f"{self.budget_minutes:g} min)") if cut else f"{self.epochs:g} more epochs"
        resumed = f" (resumed at step {res.resumed_from} of a stopped run)" if res.resumed_from is not None else ""
        return done + _where(self.device) + resumed, lr


def _where(device: str | None) -> str:
    """The route's words for the training device: nothing for the CPU."""
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda":
        return f" on {torch.cuda.get_device_name(device)} (bf16 autocast)"
    return "" if kind == "cpu" else f" on {device}"


def more_vit(model: nn.Module, seed: int, quick: bool, more: More) -> str:
    """More epochs of :func:`recipe_vit`'s 196-token stage on the whole training set."""
    x, y = _fmnist(1024 if quick else more.samples)
    batch = more.batch or 64
    done, lr = more.run(model, _loader(x, y, batch, True, soft=teacher_logits(x, more.device)), batch, 3e-4,
                        x.shape[0], seed + 7, "fmnist-vit more", **_VIT_DISTILL)
    return (f"{done} on {x.shape[0]} samples at 196 tokens distilled from fmnist-resnet's "
            f"precomputed logits (KL at T=2, weight 0.5, no label smoothing, lr {lr:g}, batch {batch}, shift+flip)")


def more_vivit(model: nn.Module, seed: int, quick: bool, more: More) -> str:
    """More epochs of :func:`recipe_vivit`'s video stage (196 tokens, distilled)."""
    n = 512 if quick else more.samples or 60000
    x, y, soft = _motion_train(n, seed, more.device)
    batch = more.batch or 64
    done, lr = more.run(model, _loader(x, y, batch, True, soft=soft), batch, 3e-4, n, seed + 7, "motion-vivit more",
                        **_VIT_DISTILL)
    return (f"{done} on {n} clips at 196 tokens, batch {batch}, lr {lr:g}, shift+flip, distilled from "
            "fmnist-resnet's logits for each clip's clean item (KL at T=2, weight 0.5, no label smoothing)")


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """Parameters of ``module`` take no gradient inside the block; their flags come back afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def more_segvit(model: nn.Module, seed: int, quick: bool, more: More) -> str:
    """More epochs of :func:`recipe_segvit`'s last stage (whole mosaics at 196 tokens)."""
    batch, n = more.batch or 64, 512 if quick else more.samples or _SEG_SAMPLES
    if more.stream:
        items, labels = load_fashion_mnist("train")
        batches = _stream(items, labels, batch, n // batch, more.shift or 0, more.device)
        which = (f"mosaics drawn new for every batch from the {items.shape[0]} training items ({n} to an epoch, "
                 "rendered on the training device)")
    else:
        start = more.offset or 0
        x, y = load_mosaic("train", n=n, seed=seed, start=start)
        batches = _loader(x, y, batch, True, seg=True, seg_shift=more.shift or 0)
        which = (f"{n} whole training mosaics numbered {start}-{start + n - 1}" if start
                 else f"the {n} whole mosaics")
    with _frozen(model.encoder) if more.decoder_only else contextlib.nullcontext():
        done, lr = more.run(model, batches, batch, 2e-4, n, seed + 7, "mosaic-segvit more", label_smoothing=0.0)
    shift = f"shift up to {more.shift} px + " if more.shift else ""
    part = ", decoder and pixel-refinement head only (encoder frozen)" if more.decoder_only else ""
    return (f"{done} on {which} at 196 tokens{part} (batch {batch}, lr {lr:g}, {shift}flip, "
            "no label smoothing)")


# the stage that continues each shipped checkpoint that has one (a view of its ZooEntry)
MORE: dict[str, Callable[[nn.Module, int, bool, More], str]] = {
    name: e.more for name, e in ENTRIES.items() if e.more is not None}

# heads added to an architecture after its checkpoint was shipped (a view of its ZooEntry)
_NEW_HEADS = {name: e.new_heads for name, e in ENTRIES.items() if e.new_heads}


def _continue(name: str, seed: int, quick: bool, more: More) -> tuple[nn.Module, str, float]:
    """Load the shipped checkpoint of ``name`` and train it ``more.epochs`` more; the route says so.

    A checkpoint made before a head of :data:`_NEW_HEADS` existed gets that head as initialised (the
    pixel-refinement head starts at zero, so the model starts with the checkpoint's outputs).
    """
    from prunekit.zoo.store import load_state, read_manifest
    if name not in MORE:
        raise ZooLookupError(name, "continue training", f"no continuation stage; choose one of {', '.join(MORE)}")
    if more.shift and name != "mosaic-segvit":
        raise ValueError(f"--shift applies to mosaic-segvit only; {name}'s stage already shifts its inputs by 2 px")
    for flag, value in (("--sample-offset", more.offset), ("--decoder-only", more.decoder_only),
                        ("--stream", more.stream)):
        if value and name != "mosaic-segvit":
            raise ValueError(f"{flag} applies to mosaic-segvit only")
    old = read_manifest()[name]
    more = replace(more, start=old["sha256"])  # a new shipped checkpoint starts a new run folder
    model = models.build(name)
    added = load_adding_heads(model, load_state(name), _NEW_HEADS.get(name, ()))
    stage = MORE[name](model, seed, quick, more)
    if added:
        stage = ("added the pixel-refinement head (zero-initialised output conv, so it started with the "
                 f"checkpoint's outputs), then {stage}")
    route = f"{old['route']}; then, resumed from the checkpoint with sha256 {old['sha256'][:12]}, {stage}"
    return model, route, float(old.get("train_minutes", 0.0))


def train_model(name: str, seed: int = 0, quick: bool = False, out_dir=None, threads: int | None = None,
                command: str = "", more_epochs: float = 0.0, more: More | None = None, **recipe_kwargs) -> dict:
    """Train zoo model ``name``, evaluate it on the full eval split, write checkpoint + manifest entry.

    ``more_epochs`` (or ``more``, with a device, batch, lr, samples, time budget): instead of the whole
    recipe, continue the shipped checkpoint for that many epochs of the recipe's last stage
    (:data:`MORE`); ``train_minutes`` then adds up both runs.
    """
    from prunekit.zoo.registry import evaluate_model
    if name not in RECIPES:
        raise ZooLookupError(name, "train the zoo model", f"no training recipe; choose one of {', '.join(RECIPES)}")
    if threads:
        torch.set_num_threads(threads)
    t0, before = time.time(), 0.0
    more = more or (More(more_epochs) if more_epochs else None)
    if more:
        model, route, before = _continue(name, seed, quick, more)
    else:
        model, route = RECIPES[name](seed, quick, **recipe_kwargs)
    model.cpu()
    minutes = before + (time.time() - t0) / 60
    metric = evaluate_model(name, model, limit=256 if quick else None)
    entry = {"metric": metric, "metric_subset": evaluate_model(name, model, limit=SUBSET),
             "subset_limit": SUBSET, "seed": seed, "route": route, "train_minutes": round(minutes, 1),
             "threads": torch.get_num_threads(), "command": command or f"prunekit zoo train {name}",
             "params": sum(p.numel() for p in model.parameters())}
    return save_checkpoint(name, model, entry, out_dir=out_dir)
