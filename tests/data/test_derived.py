import pytest
import torch

from prunekit.data import load_corpus, load_fashion_mnist, load_mosaic, load_motion, motion_items
from prunekit.data.mosaic import NUM_SEG_CLASSES, SILHOUETTE_LEVEL, on_texture


def test_mosaic_shapes_labels_and_determinism():
    x, y = load_mosaic("test", n=16, seed=3)
    assert x.shape == (16, 1, 56, 56) and x.dtype == torch.uint8
    assert y.shape == (16, 56, 56) and int(y.max()) < NUM_SEG_CLASSES
    x2, y2 = load_mosaic("test", n=8, seed=3)  # sample i does not depend on n
    assert torch.equal(x[:8], x2) and torch.equal(y[:8], y2)
    x3, _ = load_mosaic("test", n=8, seed=4)
    assert not torch.equal(x2, x3)
    fg = (y > 0).float().mean()
    assert 0.15 < float(fg) < 0.7  # items cover a real part of the canvas, background the rest
    # silhouettes are irregular: label regions are not axis-aligned boxes
    assert (y[0] > 0).sum() < 3 * 28 * 28


def test_mosaic_start_gives_the_same_samples_as_a_longer_set(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    x, y = load_mosaic("train", n=7)
    xs, ys = load_mosaic("train", n=3, start=4)
    assert torch.equal(xs, x[4:]) and torch.equal(ys, y[4:])
    with pytest.raises(ValueError, match="start=-1"):
        load_mosaic("train", n=3, start=-1)


def test_mosaic_labels_are_cached_as_uint8_and_returned_as_int64(tmp_path, monkeypatch):
    from prunekit.data.cache import cache_dir
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    x, y = load_mosaic("test", n=5, seed=9)
    stored = torch.load(cache_dir() / "mosaic-test-5-9-3-v1.pt", weights_only=True)
    assert stored[1].dtype == torch.uint8 and torch.equal(stored[1].long(), y) and torch.equal(stored[0], x)
    x2, y2 = load_mosaic("test", n=5, seed=9)  # from the cache
    assert y.dtype == y2.dtype == torch.int64 and torch.equal(y, y2) and torch.equal(x, x2)


def test_on_texture_keeps_silhouette_and_fills_the_rest_with_texture():
    items = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    items[:, :, 8:20, 8:20] = 180  # a square garment; the rest is below the silhouette level
    x = on_texture(items, torch.Generator().manual_seed(0))
    assert x.shape == items.shape and x.dtype == torch.uint8
    assert (x[:, :, 8:20, 8:20] == 180).all()  # the garment is pasted unchanged
    outside = x[:, 0, :8].float()
    assert outside.std() > 1 and outside.max() <= 90  # texture (max level 90) where the item is dark
    assert not torch.equal(x[0, 0, :8], x[1, 0, :8])  # each item gets its own crop
    y = on_texture(items, torch.Generator().manual_seed(0))
    assert torch.equal(x, y) and int(SILHOUETTE_LEVEL) == 8


def test_motion_static_background_moving_item():
    x, y = load_motion("test", n=6, seed=1)
    assert x.shape == (6, 1, 8, 56, 56) and y.shape == (6,)
    clip = x[0, 0].float()
    static = (clip == clip[0]).all(0).float().mean()
    assert static > 0.3  # much of the background never changes across frames
    assert not torch.equal(clip[0], clip[-1])  # but the item moves
    x2, y2 = load_motion("test", n=3, seed=1)
    assert torch.equal(x[:3], x2) and torch.equal(y[:3], y2)


def test_motion_items_name_the_item_each_clip_shows():
    x, y = load_motion("test", n=6, seed=1)
    k = motion_items("test", n=6, seed=1)
    items, labels = load_fashion_mnist("test")
    assert torch.equal(labels[k], y)
    for clip, idx in zip(x, k, strict=True):
        item = items[idx, 0]
        mask = item > 8
        frame = clip[0, 0]
        hits = [bool((frame[r:r + 28, c:c + 28][mask] == item[mask]).all())
                for r in range(29) for c in range(29)]
        assert any(hits), "the named item is not pasted in the clip's first frame"


def test_corpus_is_real_sentences():
    s = load_corpus()
    assert len(s) >= 3000
    assert len(set(s)) == len(s)
    assert all(line[0].isupper() and line.endswith(".") and len(line.split()) >= 6 for line in s)
    assert load_corpus(limit=10) == s[:10]
