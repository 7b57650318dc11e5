"""Checkpoint files and the manifest that records how each was made."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["CHECKPOINT_DIR", "MANIFEST", "read_manifest", "save_checkpoint", "load_state", "sha256"]

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
MANIFEST = Path(__file__).parent / "manifest.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest(path: Path = MANIFEST) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def save_checkpoint(name: str, model: nn.Module, entry: dict, out_dir: Path | None = None) -> dict:
    """Write ``NAME.safetensors`` and merge ``entry`` (+ file name and sha256) into the manifest."""
    out = Path(out_dir) if out_dir else CHECKPOINT_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"name": name})
    entry = {**entry, "file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size}
    manifest_path = out / "manifest.json" if out_dir else MANIFEST
    with open(manifest_path.with_suffix(".lock"), "w") as lock:  # trainings may finish concurrently
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest(manifest_path)
        manifest[name] = entry
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return entry


def load_state(name: str) -> dict:
    """The shipped state dict of zoo model ``name``, checked against the manifest's sha256."""
    entry = read_manifest().get(name)
    path = CHECKPOINT_DIR / f"{name}.safetensors"
    if entry is None or not path.is_file():
        raise FileNotFoundError(f"zoo model {name!r} has no shipped checkpoint; run `prunekit zoo train {name}`")
    if sha256(path) != entry["sha256"]:
        raise ValueError(f"{path}: sha256 does not match the manifest; the checkpoint is corrupt or stale")
    return load_file(str(path))


def train_dir(run: str) -> Path:
    """Where a zoo recipe keeps the checkpoints of run ``run`` (to resume a stopped run):
    ``$PRUNEKIT_TRAIN_DIR/run``, by default under ``runs/zoo-train`` of the working directory."""
    return Path(os.environ.get("PRUNEKIT_TRAIN_DIR", "runs/zoo-train")) / run
