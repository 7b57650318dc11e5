"""Data specs: what ``--data`` / ``--val`` name, checked cheaply and then built into datasets.

- ``imagefolder:DIR``: a torchvision ``ImageFolder`` tree (``DIR/<class>/<image>``), preprocessed
  with timm's ``resolve_data_config`` + ``create_transform`` for the model (training augmentation on
  the training split only); ``img_size`` overrides the model's input size (a CPU budget);
- ``hf:DIR``: a Hugging Face ``datasets`` directory written by ``save_to_disk`` (a ``Dataset``, or a
  ``DatasetDict`` whose ``train`` / ``validation`` / ``test`` split is taken), with a ``text`` (or
  ``sentence``) column and an integer ``label``; tokenized with the model's tokenizer.

:func:`check_spec` runs before any model is built (the CLI's one-line errors); :func:`split` takes a
seeded validation share out of a training set (``--val-split``).

>>> import tempfile
>>> check_spec("imagefolder:" + tempfile.mkdtemp())
Traceback (most recent call last):
...
prunekit.errors.PruningError: imagefolder:...: cannot read the data: no class folder with images in it; ...
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from prunekit.errors import PruningError

__all__ = ["KINDS", "parse_spec", "check_spec", "image_folder", "hf_text", "split", "num_classes", "describe",
           "IMAGE_EXT"]

KINDS = ("imagefolder", "hf")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def parse_spec(spec: str) -> tuple[str, str]:
    """``"imagefolder:DIR"`` -> ``("imagefolder", "DIR")``; anything without a known prefix -> ``("name", spec)``."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in KINDS:
        if not rest:
            raise PruningError(spec, "read the data", f"give a directory after '{kind}:'")
        return kind, rest
    return "name", spec


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXT for p in folder.rglob("*") if p.is_file())


def check_spec(spec: str) -> tuple[str, str]:
    """Fail with one line naming the problem unless ``spec`` can be read; returns :func:`parse_spec`'s pair.

    Only looks at the file system (no image is decoded, no dataset loaded)."""
    kind, where = parse_spec(spec)
    if kind == "name":
        return kind, where
    path = Path(where)
    if not path.is_dir():
        raise PruningError(spec, "read the data", f"{where} is not a directory; give an existing folder")
    if kind == "imagefolder":
        classes = [d for d in path.iterdir() if d.is_dir() and _has_images(d)]
        if not classes:
            raise PruningError(spec, "read the data", f"no class folder with images in it; an ImageFolder is "
                               f"{where}/<class>/<image>{IMAGE_EXT[0]}")
    elif not any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise PruningError(spec, "read the data", "not a Hugging Face datasets directory (no dataset_info.json, "
                           "state.json or dataset_dict.json); write it with Dataset.save_to_disk")
    return kind, where


def image_folder(where: str, model: nn.Module, train: bool, img_size: int | None = None,
                 crop_scale: float | None = None) -> Dataset:
    """An ``ImageFolder`` over ``where`` with timm's preprocessing for ``model`` (augmented if ``train``:
    timm's random resized crop, whose smallest area share ``crop_scale`` sets, flip and colour jitter)."""
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder
    cfg = resolve_data_config({}, model=model)
    if img_size:
        cfg["input_size"] = (cfg["input_size"][0], img_size, img_size)
        cfg["crop_pct"] = 1.0
    extra = {"scale": (crop_scale, 1.0)} if train and crop_scale else {}
    transform = create_transform(**cfg, is_training=train, **extra)
    ds = ImageFolder(where, transform=transform)
    ds.prunekit_input_size = tuple(cfg["input_size"])  # what the model is fed, for saving and profiling
    return ds


class _Tokenized(Dataset):
    def __init__(self, rows: Any, tokenizer: Any, text: str, max_length: int):
        self.rows, self.tok, self.text, self.max_length = rows, tokenizer, text, max_length
        self.classes = _label_names(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[int(i)]
        enc = self.tok(row[self.text], truncation=True, max_length=self.max_length, padding="max_length",
                       return_tensors="pt")
        out = {k: v[0] for k, v in enc.items()}
        out["labels"] = torch.tensor(int(row["label"]))
        return out


def _label_names(rows: Any) -> list:
    feat = rows.features.get("label")
    names = getattr(feat, "names", None)
    if names:
        return list(names)
    return sorted({int(v) for v in rows["label"]})


def hf_text(where: str, tokenizer: Any, split_name: str = "train", max_length: int = 128) -> Dataset:
    """A saved ``datasets`` text-classification set, tokenized on the fly; batches are dicts with ``labels``."""
    try:
        import datasets
    except ImportError:
        raise PruningError(f"hf:{where}", "read the data", "the 'datasets' package is not installed; "
                           "pip install datasets") from None
    rows = datasets.load_from_disk(where)
    if isinstance(rows, datasets.DatasetDict):
        names = [split_name] + [s for s in ("train", "validation", "test") if s != split_name]
        key = next((s for s in names if s in rows), None)
        if key is None:
            raise PruningError(f"hf:{where}", "read the data", f"no split among {names}; it has {list(rows)}")
        rows = rows[key]
    text = next((c for c in ("text", "sentence", "content") if c in rows.column_names), None)
    if text is None or "label" not in rows.column_names:
        raise PruningError(f"hf:{where}", "read the data", f"need a 'text' (or 'sentence') column and a 'label' "
                           f"column; it has {rows.column_names}")
    if len(rows) == 0:
        raise PruningError(f"hf:{where}", "read the data", "the dataset has no rows")
    return _Tokenized(rows, tokenizer, text, max_length)


def split(ds: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``(train, val)``: a seeded random ``fraction`` of ``ds`` held out for validation.

    >>> tr, va = split(list(range(10)), 0.3)
    >>> len(tr), len(va), sorted(list(tr) + list(va)) == list(range(10))
    (7, 3, True)
    """
    if not 0 < fraction < 1:
        raise PruningError("--val-split", "split the data", f"give a fraction in (0, 1), got {fraction}")
    n = len(ds)
    k = max(1, int(round(n * fraction)))
    if k >= n:
        raise PruningError("--val-split", "split the data", f"{n} samples leave none to train on at {fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    train, val = Subset(ds, sorted(order[k:])), Subset(ds, sorted(order[:k]))
    for part in (train, val):
        for attr in ("classes", "prunekit_input_size"):
            if hasattr(ds, attr):
                setattr(part, attr, getattr(ds, attr))
    return train, val


def num_classes(ds: Dataset) -> int | None:
    """How many classes ``ds`` names (``classes`` of an ImageFolder or a tokenized HF set), if it says."""
    classes = getattr(ds, "classes", None)
    return len(classes) if classes is not None else None


def describe(spec: str, ds: Dataset) -> dict:
    """What the CLI reports about one data spec."""
    return {"spec": spec, "samples": len(ds), "classes": num_classes(ds)}
