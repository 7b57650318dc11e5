"""The recipe of ``fmnist-vit-dynamic``: DynamicViT trained on fmnist-vit as the paper trains it.

The shipped fmnist-vit is wrapped in :class:`~prunekit.tokens.DynamicViT` (scorers before blocks 3,
6 and 9, keeping 0.7 of the patch tokens at each, so 0.7, 0.49 and 0.343 are left) and trained by
:func:`prunekit.train.fit_dynamic` on all 60,000 training images (shift + flip): the scorers at
lr 1e-3, the whole backbone at :data:`BACKBONE_LR`, cross-entropy plus KL and token distillation
from the frozen dense fmnist-vit, and the keep-ratio loss. The run writes a checkpoint every
:data:`CHECKPOINT_EVERY` steps under ``$PRUNEKIT_TRAIN_DIR`` (default ``runs/zoo-train``) and
continues from the newest one when started again with the same seed, so a CPU run of hours can
be stopped and resumed (``prunekit zoo train fmnist-vit-dynamic`` again).

``prunekit zoo train fmnist-vit-dynamic --more-epochs E`` continues the shipped checkpoint
(:func:`more_vit_dynamic`) on the same objective and learning rates, with the scorers' decisions
drawn by Gumbel-top-k (``sampling="topk"``): training keeps exactly the tokens inference keeps.
"""
from __future__ import annotations

from torch import nn

from prunekit.tokens import DynamicViT
from prunekit.train.loop import FitResult
from prunekit.zoo import models
from prunekit.zoo.store import train_dir

__all__ = ["build_vit_dynamic", "recipe_vit_dynamic", "more_vit_dynamic", "STAGES", "KEEP", "EPOCHS", "BACKBONE_LR"]

STAGES, KEEP = (3, 6, 9), 0.7   # the paper's DeiT-S setting
EPOCHS = 1.0                    # over all 60,000 images (about 64 min on 2 CPU threads)
LR, BACKBONE_LR, BATCH = 1e-3, 1e-4, 64
CHECKPOINT_EVERY = 100


def build_vit_dynamic() -> DynamicViT:
    """fmnist-vit's architecture wrapped in DynamicViT (fresh weights; the zoo loads the shipped ones)."""
    return DynamicViT(models.build_vit(2), stages=STAGES, keep=KEEP)


def recipe_vit_dynamic(seed: int, quick: bool, epochs: float | None = None) -> tuple[nn.Module, str]:
    """Train the DynamicViT from the shipped fmnist-vit (resuming a stopped run); returns it and its route."""
    from prunekit.train import fit_dynamic
    from prunekit.train.checkpoint import latest
    from prunekit.zoo.registry import load
    from prunekit.zoo.train import _fmnist, _loader
    epochs = epochs if epochs is not None else (0.02 if quick else EPOCHS)
    dense = load("fmnist-vit").model
    model = DynamicViT(models.build_vit(2), stages=STAGES, keep=KEEP)
    model.vit.load_state_dict(dense.state_dict())
    x, y = _fmnist(1024 if quick else None)
    # keyed by every setting: a changed run starts afresh instead of resuming another's schedule
    folder = train_dir(f"fmnist-vit-dynamic-seed{seed}-e{epochs:g}{'-quick' if quick else ''}")
    resumed = latest(folder) is not None
    history = fit_dynamic(model, _loader(x, y, BATCH, True), epochs=epochs, lr=LR, backbone_lr=BACKBONE_LR,
                          teacher=dense, steps_per_epoch=x.shape[0] // BATCH, seed=seed, checkpoint_dir=str(folder),
                          checkpoint_every=CHECKPOINT_EVERY, resume=resumed, desc="fmnist-vit-dynamic")
    tail = history[-100:]
    if not tail:
        raise ValueError(f"{folder} holds a finished run of these settings; remove it to train again")
    kept = [round(sum(h[f"kept{i + 1}"] for h in tail) / len(tail), 3) for i in range(len(STAGES))]
    targets = [round(t, 3) for t in model.keep_targets()]
    route = (f"the shipped fmnist-vit wrapped in DynamicViT (scorers before blocks {', '.join(map(str, STAGES))}, "
             f"keep {KEEP}); {epochs:g} epochs on {x.shape[0]} images (shift+flip, batch {BATCH}), scorers at lr "
             f"{LR:g}, the whole backbone at {BACKBONE_LR:g} (AdamW, warm-up + cosine), loss = cross-entropy + "
             "0.5 KL + 0.5 token distillation from the frozen dense fmnist-vit + 2.0 keep-ratio; share kept "
             f"after each stage over the last 100 training steps {kept} against targets {targets}"
             + ("; resumed from a checkpoint of a stopped run" if resumed else ""))
    return model, route


def _fit_with_objective(teacher: nn.Module):
    """A :meth:`prunekit.zoo.train.More.run` trainer: :func:`prunekit.train.fit_dynamic` with the recipe's
    backbone lr and ``teacher``, called as the zoo's ``fit`` is."""
    from prunekit.train import fit_dynamic

    def trainer(model: DynamicViT, batches, epochs: float, lr: float, steps_per_epoch: int, seed: int = 0,
                **kw) -> FitResult:
        return fit_dynamic(model, batches, epochs=epochs, lr=lr, backbone_lr=BACKBONE_LR, teacher=teacher,
                           steps_per_epoch=steps_per_epoch, seed=seed, **kw).result
    return trainer


def more_vit_dynamic(model: DynamicViT, seed: int, quick: bool, more) -> str:
    """More epochs of the recipe's objective on the shipped checkpoint, drawing the training decisions by
    Gumbel-top-k (exactly the inference counts); ``more`` is a :class:`prunekit.zoo.train.More`."""
    from prunekit.zoo.registry import load
    from prunekit.zoo.train import _fmnist, _loader
    x, y = _fmnist(1024 if quick else more.samples)
    batch = more.batch or BATCH
    model.sampling = "topk"
    done, lr = more.run(model, _loader(x, y, batch, True), batch, LR, x.shape[0], seed + 7, "fmnist-vit-dynamic more",
                        trainer=_fit_with_objective(load("fmnist-vit").model))
    counts = "/".join(str(c) for c in sorted(set(model.token_counts()), reverse=True))
    return (f"{done} on {x.shape[0]} images (shift+flip, batch {batch}) with the same objective, scorers at lr "
            f"{lr:g} and the backbone at {BACKBONE_LR:g}, the training decisions drawn by Gumbel-top-k "
            f"(sampling='topk': exactly the {counts} patch tokens inference keeps)")
