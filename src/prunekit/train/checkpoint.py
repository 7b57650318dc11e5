"""Checkpoints that let a killed training run continue to the same result.

A checkpoint is a folder ``step-N`` holding the model (:func:`prunekit.save`: architecture and
masks included, since pruning during training changes both) and ``state.pt`` (optimizer, step,
epoch, position in the epoch, RNG states, callback states), read back with
``torch.load(weights_only=True)``, which runs no code. The file ``latest`` names the newest
complete folder; it is replaced atomically after the folder is written, so a run killed while
writing leaves the previous checkpoint intact. Only rank 0 writes.

>>> import tempfile
>>> latest(tempfile.mkdtemp()) is None
True
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from prunekit.errors import PruningError
from prunekit.train import distributed as D

__all__ = ["save", "restore", "adopt", "latest", "restore_rng", "KEEP"]

KEEP = 2  # checkpoint folders kept: the newest and the one written before it


def latest(folder: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``folder``, or ``None``."""
    pointer = Path(folder) / "latest"
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text().strip()
    return path if (path / "state.pt").is_file() and (path / "model.safetensors").is_file() else None


def _rng() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
             "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save(trainer, folder: str | Path, final: bool = False) -> Path | None:
    """Write ``trainer``'s state under ``folder`` (rank 0 only; every rank waits for it)."""
    import prunekit
    folder = Path(folder)
    path = folder / f"step-{trainer.step}"
    if D.is_main():
        previous = latest(folder)   # kept with the new one, whatever its step (another run's may be higher)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-step-{trainer.step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        prunekit.save(trainer.model, tmp / "model.safetensors", meta={"step": trainer.step})
        src = trainer.source
        state = {"step": trainer.step, "epoch": trainer.epoch, "in_epoch": trainer.in_epoch,
                 "total_steps": trainer.total_steps, "warmup": trainer.warmup, "final": final,
                 "world_size": trainer.world_size, "optimizer": trainer.optimizer.state_dict(), "rng": _rng(),
                 "gen": src.gen.get_state() if src.gen is not None else None,
                 "gen_epoch": src.epoch_state if src.epoch_state is not None else None,
                 "callbacks": [cb.state_dict() for cb in trainer.callbacks]}
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        pointer = folder / ".latest.tmp"
        pointer.write_text(path.name)
        os.replace(pointer, folder / "latest")
        # keep the newest checkpoint and the one written before it, by when they were written, not by step:
        # a fresh run in a folder that holds an older run's higher steps must not delete its own
        keep = {path.name} | ({previous.name} if previous is not None else set())
        for old in folder.glob("step-*"):
            if old.is_dir() and old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
    D.barrier()
    return path


def adopt(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Make ``dst`` what ``src`` is (parameters, buffers, attributes, sub-modules) while keeping the
    identity of every sub-module object ``dst`` already has where ``src`` has one of the same class at
    the same place: a caller holding an inner module (the DynamicViT inside a training wrapper) sees
    the restored weights, and the hooks it put on them stay. Sub-modules that only ``src`` has (added or
    replaced in training) are taken.

    >>> a, b = torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.nn.Sequential(torch.nn.Linear(2, 3))
    >>> inner = a[0]
    >>> adopt(a, b)
    >>> a[0] is inner, inner.out_features, torch.equal(inner.weight, b[0].weight)
    (True, 3, True)
    """
    for name, child in list(src._modules.items()):
        mine = dst._modules.get(name)
        if child is not None and mine is not None and type(mine) is type(child) and mine is not child:
            adopt(mine, child)
            src._modules[name] = mine
    hooks = {k: v for k, v in dst.__dict__.items() if "hook" in k}  # the caller's hooks stay on its modules
    dst.__dict__.update(src.__dict__)
    dst.__dict__.update(hooks)


def restore(trainer, folder: str | Path | None) -> int:
    """Load the newest checkpoint under ``folder`` into ``trainer``; return the step it was taken at."""
    import prunekit
    path = latest(folder) if folder else None
    if path is None:
        raise PruningError(str(folder), "resume training", "no checkpoint there; run once without resume "
                           "(with the same checkpoint folder) first")
    state = torch.load(path / "state.pt", weights_only=True)
    if state["world_size"] != trainer.world_size:
        raise PruningError(str(path), "resume training", f"the run used {state['world_size']} processes, this "
                           f"one {trainer.world_size}; resume with the same --nproc_per_node")
    own = {type(m) for m in trainer.model.modules()}  # the run's own classes: it wrote this file itself
    saved = prunekit.load(path / "model.safetensors", map_location=trainer.device, classes=own)
    saved.__dict__.pop("prunekit_meta", None)
    adopt(trainer.model, saved)  # architecture, weights and masks as at the checkpoint
    trainer.model.train()
    trainer.optimizer = trainer._optimizer()
    trainer.optimizer.load_state_dict(state["optimizer"])
    from prunekit.train import distributed
    trainer.wrapped = distributed.wrap(trainer.model, trainer.device, trainer.cfg.find_unused_parameters)
    trainer.step, trainer.epoch, trainer.in_epoch = state["step"], state["epoch"], state["in_epoch"]
    trainer.total_steps, trainer.warmup = state["total_steps"], state["warmup"]
    for cb, cb_state in zip(trainer.callbacks, state["callbacks"], strict=False):
        cb.load_state_dict(cb_state)
    trainer._resume_state = state
    if trainer.in_epoch == 0:
        restore_rng(trainer)
    elif state["gen_epoch"] is not None:
        trainer.source.gen.set_state(state["gen_epoch"])  # replay the epoch's stream up to the checkpoint
    return int(state["step"])


def restore_rng(trainer) -> None:
    """Put every random generator back as it was when the checkpoint being resumed was taken."""
    state = getattr(trainer, "_resume_state", None)
    if state is None:
        return
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(("MT19937", np.array(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(rng["python"]), None))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if state["gen"] is not None:
        trainer.source.gen.set_state(state["gen"])
    trainer._resume_state = None
