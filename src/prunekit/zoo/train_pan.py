"""The recipe of ``motion-vivit-pan``: motion-vivit's video model, trained on clips under camera motion.

The clips (:func:`prunekit.data.load_motion` with ``camera=True``) hold the same garments as
motion-vivit's, but the textured background pans, zooms slightly and shakes, so a location's tokens no
longer repeat over time. The model starts from the shipped motion-vivit (the same architecture,
trained the same way: single frames, inflated to tubelets, distilled from fmnist-resnet's logits for
each clip's clean item) and trains :data:`EPOCHS` epochs on the 60,000 camera-motion training clips with
the same distillation, batch and augmentation. The run writes a checkpoint every
:data:`CHECKPOINT_EVERY` steps under ``$PRUNEKIT_TRAIN_DIR`` and continues from the newest one when
started again with the same settings (``prunekit zoo train motion-vivit-pan`` again).

``prunekit zoo train motion-vivit-pan --more-epochs E`` continues the shipped checkpoint on the same
clips (:func:`more_vivit_pan`).
"""
from __future__ import annotations

from torch import nn

from prunekit.zoo import models
from prunekit.zoo.store import train_dir

__all__ = ["recipe_vivit_pan", "more_vivit_pan", "EPOCHS", "LR", "BATCH"]

EPOCHS = 1.0                  # over all 60,000 camera-motion clips
LR, BATCH = 3e-4, 64          # motion-vivit's continuation stage
CHECKPOINT_EVERY = 100


def recipe_vivit_pan(seed: int, quick: bool, epochs: float | None = None) -> tuple[nn.Module, str]:
    """Train motion-vivit-pan from the shipped motion-vivit (resuming a stopped run); returns it and its route."""
    from prunekit.train.checkpoint import latest
    from prunekit.zoo.registry import evaluate_model
    from prunekit.zoo.store import load_state, read_manifest
    from prunekit.zoo.train import _VIT_DISTILL, _loader, _motion_train, fit
    epochs = epochs if epochs is not None else (0.1 if quick else EPOCHS)
    n = 512 if quick else 60000
    start = read_manifest()["motion-vivit"]["sha256"]
    model = models.build_vivit()
    model.load_state_dict(load_state("motion-vivit"))
    n_eval = 256 if quick else None
    before = evaluate_model("motion-vivit-pan", model, n_eval)["top1"]
    x, y, soft = _motion_train(n, seed, camera=True)
    # keyed by every setting and the starting checkpoint: a changed run starts afresh
    folder = train_dir(f"motion-vivit-pan-seed{seed}-e{epochs:g}-{start[:12]}{'-quick' if quick else ''}")
    fit(model, _loader(x, y, BATCH, True, soft=soft), epochs, LR, n // BATCH, seed + 11, desc="motion-vivit-pan",
        checkpoint_dir=str(folder), checkpoint_every=CHECKPOINT_EVERY, resume=latest(folder) is not None,
        **_VIT_DISTILL)
    return model, (f"the shipped motion-vivit (sha256 {start[:12]}; {'first 256' if quick else 'all 2000'} "
                   f"camera-motion test clips: top1 {before:.4f} before this stage), then {epochs:g} epochs on "
                   f"{n} camera-motion training clips (pan up to 1.5 px/frame, zoom up to 8%, 1 px shake) at 196 "
                   f"tokens, batch {BATCH}, lr {LR:g}, shift+flip, distilled from fmnist-resnet's logits for each "
                   "clip's clean item (KL at T=2, weight 0.5, no label smoothing)")


def more_vivit_pan(model: nn.Module, seed: int, quick: bool, more) -> str:
    """More epochs of :func:`recipe_vivit_pan`'s stage on the camera-motion clips."""
    from prunekit.zoo.train import _VIT_DISTILL, _loader, _motion_train
    n = 512 if quick else more.samples or 60000
    x, y, soft = _motion_train(n, seed, more.device, camera=True)
    batch = more.batch or BATCH
    done, lr = more.run(model, _loader(x, y, batch, True, soft=soft), batch, LR, n, seed + 17,
                        "motion-vivit-pan more", **_VIT_DISTILL)
    return (f"{done} on {n} camera-motion clips at 196 tokens, batch {batch}, lr {lr:g}, shift+flip, distilled "
            "from fmnist-resnet's logits for each clip's clean item (KL at T=2, weight 0.5, no label smoothing)")
