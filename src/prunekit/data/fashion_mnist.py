"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) read straight from IDX files, no downloads.

Search order: an explicit ``data_dir`` (the CLI's ``--data-dir``), the ``PRUNEKIT_DATA``
environment variable, then Debian's ``dataset-fashion-mnist`` install location. Each directory may
hold the four IDX files (gzipped or not) directly or in torchvision's ``FashionMNIST/raw`` layout.

>>> x, y = load_fashion_mnist("test")   # doctest: +SKIP
>>> x.shape, x.dtype, y.shape
(torch.Size([10000, 1, 28, 28]), torch.uint8, torch.Size([10000]))
"""
from __future__ import annotations

import gzip
import os
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from prunekit.errors import DataNotFoundError

__all__ = ["CLASSES", "DEBIAN_DIR", "find_fashion_mnist", "load_fashion_mnist", "normalize", "write_image_folder"]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MEAN, STD = 0.2860, 0.3530


def _candidates(data_dir: str | os.PathLike | None) -> list[Path]:
    roots = [Path(p) for p in (data_dir, os.environ.get("PRUNEKIT_DATA")) if p]
    roots.append(DEBIAN_DIR)
    out = []
    for r in roots:
        out += [r, r / "FashionMNIST" / "raw", r / "fashion-mnist"]
    return out


def _file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the directory holding all four Fashion-MNIST IDX files, or raise a clear error."""
    tried = _candidates(data_dir)
    explicit_only = bool(data_dir or os.environ.get("PRUNEKIT_DATA"))
    for d in (tried[:-3] if explicit_only else tried):
        if all(_file(d, s) for pair in _FILES.values() for s in pair):
            return d
    explicit = [f"{how}{p}" for how, p in (("--data-dir / data_dir ", data_dir),
                                            ("PRUNEKIT_DATA=", os.environ.get("PRUNEKIT_DATA"))) if p]
    if explicit:  # a directory the user named that holds no data is an error, not a silent fallback
        raise DataNotFoundError(
            f"Fashion-MNIST not found where you said ({'; '.join(explicit)}): none of "
            + ", ".join(str(d) for d in tried[:-3]) + " holds the four IDX files (train-images-idx3-ubyte[.gz], "
            "...). Point --data-dir / PRUNEKIT_DATA at that directory, or unset it to use the Debian package "
            "`dataset-fashion-mnist`.")
    raise DataNotFoundError(
        "Fashion-MNIST not found (looked in: " + ", ".join(str(d) for d in tried) + "). "
        "Install the Debian package `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist), "
        "or pass --data-dir DIR / set PRUNEKIT_DATA=DIR to a directory holding the four IDX files "
        "(train-images-idx3-ubyte[.gz], ...; torchvision's FashionMNIST/raw layout works too)."
    )


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@lru_cache(maxsize=4)
def _load(directory: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    img_stem, lab_stem = _FILES[split]
    images = _read_idx(_file(Path(directory), img_stem))
    labels = _read_idx(_file(Path(directory), lab_stem))
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 ``(N, 1, 28, 28)`` and labels as int64 ``(N,)`` for ``split`` train/test."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _load(str(find_fashion_mnist(data_dir)), split)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float, standardised with the training-set mean and std."""
    return (images.float() / 255.0 - MEAN) / STD


def write_image_folder(out: str | os.PathLike, split: str = "train", n: int | None = None,
                       data_dir: str | os.PathLike | None = None) -> Path:
    """Write the first ``n`` images of ``split`` as PNG files in an ImageFolder tree ``out/<class>/<i>.png``.

    The user-data form ``prunekit finetune --data imagefolder:OUT`` reads; class folders are
    ``<label>-<name>`` (``0-T-shirt-top`` ...), so ImageFolder's sorted order keeps the labels. Returns ``out``.
    """
    from PIL import Image
    x, y = load_fashion_mnist(split, data_dir)
    out = Path(out)
    for i in range(x.shape[0] if n is None else min(n, x.shape[0])):
        label = int(y[i])
        folder = out / f"{label}-{CLASSES[label].replace('/', '-').replace(' ', '_')}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i, 0].numpy()).save(folder / f"{i:05d}.png")
    return out
