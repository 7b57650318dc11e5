import gzip
import shutil

import pytest
import torch

from prunekit.data import fashion_mnist as fm
from prunekit.errors import DataNotFoundError


def test_shapes_and_labels():
    x, y = fm.load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10000,) and int(y.min()) == 0 and int(y.max()) == 9
    assert torch.bincount(y).tolist() == [1000] * 10  # the test split is balanced
    xt, _ = fm.load_fashion_mnist("train")
    assert xt.shape == (60000, 1, 28, 28)


def test_normalize_is_standardised_on_train():
    x, _ = fm.load_fashion_mnist("train")
    z = fm.normalize(x[:20000])
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02


def test_missing_data_error_names_package_flag_and_variable(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nothing")
    monkeypatch.delenv("PRUNEKIT_DATA", raising=False)
    with pytest.raises(DataNotFoundError) as e:
        fm.find_fashion_mnist(tmp_path / "empty")
    msg = str(e.value)
    assert "dataset-fashion-mnist" in msg and "--data-dir" in msg and "PRUNEKIT_DATA" in msg


@pytest.mark.parametrize("layout,gz", [("flat", False), ("FashionMNIST/raw", True)])
def test_other_directories_via_env(tmp_path, monkeypatch, layout, gz):
    src = fm.find_fashion_mnist()
    dst = tmp_path if layout == "flat" else tmp_path / layout
    dst.mkdir(parents=True, exist_ok=True)
    for pair in fm._FILES.values():
        for stem in pair:
            with gzip.open(src / (stem + ".gz"), "rb") as fin:
                if gz:
                    shutil.copy(src / (stem + ".gz"), dst / (stem + ".gz"))
                else:
                    (dst / stem).write_bytes(fin.read())
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nothing")
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path))
    assert fm.find_fashion_mnist() == dst
    x, y = fm._load(str(dst), "test")
    x0, y0 = fm.load_fashion_mnist("test")
    assert torch.equal(x, x0) and torch.equal(y, y0)
