import pytest
import torch

from prunekit.data import load_fashion_mnist
from prunekit.data.mosaic import make_mosaic
from prunekit.data.motion import load_motion
from prunekit.data.parallel import build_stacked, default_workers
from prunekit.data.texture import sample_generator


def test_parallel_build_equals_the_serial_build_sample_for_sample():
    items, labels = load_fashion_mnist("test")

    def one(i):
        return make_mosaic(items, labels, sample_generator(5, "test", i))
    serial = build_stacked(one, 23, workers=1)
    forked = build_stacked(one, 23, workers=2)
    assert serial[0].shape == (23, 1, 56, 56) and serial[1].shape == (23, 56, 56)
    assert all(torch.equal(a, b) for a, b in zip(serial, forked, strict=True))


def test_load_motion_on_workers_matches_the_serial_clips(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "serial"))
    x1, y1 = load_motion("test", n=9, seed=7)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "forked"))
    monkeypatch.setenv("PRUNEKIT_WORKERS", "2")
    x2, y2 = load_motion("test", n=9, seed=7)
    assert y1.shape == (9,) and torch.equal(x1, x2) and torch.equal(y1, y2)


def test_bad_worker_count_names_the_variable(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_WORKERS", "many")
    with pytest.raises(ValueError, match="PRUNEKIT_WORKERS"):
        default_workers()
