"""The recipe of ``mosaic-det``: DetViT, its encoder started from mosaic-segvit's, trained on detection mosaics.

The encoder starts from the shipped mosaic-segvit's (:func:`segvit_encoder`): the same ViT (width 96,
8 blocks, 4 heads, 196 tokens) trained to label garment pixels on textured mosaics, with its 4 px patch
embedding resampled to 8 px (timm's ``resample_patch_embed``, FlexiViT's pseudo-inverse resize) for
the 112 px canvas, which is the segmentation canvas at twice the scale. The neck and CenterNet head
start fresh. ``start=None`` trains from scratch instead, which needs many more epochs (hours of CPU).

:func:`recipe_det` draws ``samples`` training mosaics (:func:`prunekit.data.load_det_mosaic`, the
train split's garments; the test split's mosaics use the test garments, so no item is shared),
flips half of each batch horizontally (boxes flipped with them), and trains with
:func:`prunekit.train.fit` on :func:`prunekit.zoo.detvit.centernet_loss` (AdamW, warm-up and
cosine, clipping at 1). Items the metric ignores (under 30% visible) are neither positives nor
negatives: they get no centre peak, and the heat map is not penalised inside their boxes
(:func:`prunekit.zoo.detvit.centernet_ignore`). On a GPU pass ``device``. Checkpoints go under
``$PRUNEKIT_TRAIN_DIR`` (default ``runs/zoo-train``) every 200 steps, and a stopped run continues
from the newest one when started again with the same seed.
"""
from __future__ import annotations

import torch
from torch import nn

from prunekit.data import load_det_mosaic, normalize
from prunekit.data.detection import DET_CANVAS
from prunekit.zoo.detvit import DetViT, build_detvit, centernet_ignore, centernet_loss, centernet_targets
from prunekit.zoo.store import train_dir

__all__ = ["recipe_det", "more_det", "segvit_encoder", "det_batches", "det_loss", "EPOCHS", "SAMPLES", "START"]

EPOCHS, SAMPLES, BATCH, LR = 3.0, 32000, 64, 5e-4
START = "mosaic-segvit"   # the zoo model whose encoder mosaic-det starts from


def segvit_encoder(model: DetViT) -> str:
    """Load the shipped mosaic-segvit's encoder into ``model.encoder`` (patch embedding resampled to
    the detector's patch size); returns the checkpoint's sha256. Only the encoder is loaded: every
    encoder tensor must match, the neck and head stay as initialised."""
    from timm.layers import resample_patch_embed

    from prunekit.zoo.store import load_state, read_manifest
    state = {k.removeprefix("encoder."): v for k, v in load_state(START).items() if k.startswith("encoder.")}
    key = "patch_embed.proj.weight"
    state[key] = resample_patch_embed(state[key], list(model.encoder.patch_embed.patch_size))
    model.encoder.load_state_dict(state, strict=True)
    return read_manifest()[START]["sha256"]


def det_batches(x: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor, batch: int, augment: bool,
                ignore: torch.Tensor | None = None):
    """Shuffled ``(images, boxes, classes)`` batches, plus the items' ``ignore`` flags as a fourth
    element when given; ``augment`` flips a random half horizontally."""
    def batches(g: torch.Generator):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            xb, bb = normalize(x[idx]), boxes[idx].clone()
            if augment:
                flip = torch.rand(len(idx), generator=g) < 0.5
                xb[flip] = xb[flip].flip(-1)
                w = xb.shape[-1]
                x0 = bb[flip][..., 0].clone()
                bb[flip, :, 0] = w - bb[flip][..., 2]
                bb[flip, :, 2] = w - x0
            yield (xb, bb, classes[idx]) if ignore is None else (xb, bb, classes[idx], ignore[idx])
    return batches


def det_loss(model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """The CenterNet loss of ``model`` on one ``(images, boxes, classes[, ignore])`` batch (padding rows:
    class -1); ignored items neither count as objects nor as background."""
    x, boxes, classes, *rest = batch
    flags = rest[0] if rest else torch.zeros(classes.shape, dtype=torch.bool)
    targets = [{"boxes": b[c >= 0].cpu(), "labels": c[c >= 0].cpu(), "ignore": f[c >= 0].cpu()}
               for b, c, f in zip(boxes, classes, flags, strict=True)]
    heat, box, mask = (t.to(x.device) for t in centernet_targets(targets, x.shape[-1]))
    ignore = centernet_ignore(targets, x.shape[-1]).to(x.device)
    return centernet_loss(model(x), heat, box, mask, ignore=ignore)


def recipe_det(seed: int, quick: bool, epochs: float | None = None, samples: int | None = None,
               device: str | None = None, start: str | None = START) -> tuple[nn.Module, str]:
    """Train DetViT for ``epochs`` over ``samples`` training mosaics, its encoder from :data:`START`'s
    (``start=None``: from scratch); returns it and its route."""
    from prunekit.train import fit
    from prunekit.train.checkpoint import latest
    epochs = epochs if epochs is not None else (0.05 if quick else EPOCHS)
    samples = samples or (512 if quick else SAMPLES)
    x, boxes, classes, ignore = load_det_mosaic("train", n=samples, seed=seed)
    model = build_detvit()
    if start not in (None, START):
        raise ValueError(f"mosaic-det starts from {START!r} or from scratch (None), not {start!r}")
    sha = segvit_encoder(model) if start else ""
    # keyed by every setting: a changed run starts afresh instead of resuming another's schedule
    origin = sha[:12] or "scratch"
    folder = train_dir(f"mosaic-det-seed{seed}-e{epochs:g}-n{samples}-{origin}{'-quick' if quick else ''}")
    resumed = latest(folder) is not None
    fit(model, det_batches(x, boxes, classes, BATCH, True, ignore), epochs=epochs, lr=LR, loss=det_loss,
        steps_per_epoch=samples // BATCH, seed=seed, weight_decay=0.05, desc="mosaic-det", device=device,
        checkpoint_dir=str(folder), checkpoint_every=200, resume=resumed, channels_last=False)
    model.cpu()
    origin = (f"DetViT, its encoder from the shipped {START} (sha256 {sha[:12]}; patch embedding resampled 4 -> 8 "
              "px, FlexiViT pseudo-inverse), neck and CenterNet head fresh" if sha else "DetViT from scratch")
    route = (f"{origin}: {epochs:g} epochs on {samples} generated {DET_CANVAS} px detection mosaics "
             f"(train-split garments, horizontal flip), batch {BATCH}, AdamW lr {LR:g} with warm-up + cosine, "
             "CenterNet focal + 0.1 size L1 + offset L1, items under 30% visible ignored (no peak, no penalty "
             "in their boxes)" + (f", on {device}" if device else "")
             + ("; resumed from a checkpoint of a stopped run" if resumed else ""))
    return model, route


def _det_fit(model: nn.Module, batches, epochs: float, lr: float, steps_per_epoch: int, seed: int, **kw):
    """:class:`prunekit.zoo.train.More`'s trainer for mosaic-det: :func:`prunekit.train.fit` on the CenterNet loss."""
    from prunekit.train import fit
    return fit(model, batches, epochs=epochs, lr=lr, steps_per_epoch=steps_per_epoch, seed=seed, loss=det_loss,
               weight_decay=0.05, channels_last=False, **kw)


def more_det(model: nn.Module, seed: int, quick: bool, more) -> str:
    """More epochs of :func:`recipe_det`'s stage on the same training mosaics (``--samples``: how many)."""
    n = 512 if quick else more.samples or SAMPLES
    x, boxes, classes, ignore = load_det_mosaic("train", n=n, seed=seed)
    batch = more.batch or BATCH
    done, lr = more.run(model, det_batches(x, boxes, classes, batch, True, ignore), batch, LR, n, seed + 17,
                        "mosaic-det more", trainer=_det_fit)
    return (f"{done} on {n} generated {DET_CANVAS} px detection mosaics (train-split garments, horizontal flip), "
            f"batch {batch}, AdamW lr {lr:g} with warm-up + cosine, the same CenterNet loss")
