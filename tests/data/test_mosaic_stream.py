import pytest
import torch

from prunekit.data import load_fashion_mnist, load_mosaic, normalize
from prunekit.data.mosaic import SILHOUETTE_LEVEL
from prunekit.data.mosaic_stream import draw_params, instance_map, render, sample_params


@pytest.mark.parametrize("split", ["train", "test"])
def test_rendering_a_samples_draws_gives_exactly_the_cached_mosaic(split):
    x, y = load_mosaic(split, n=48)
    items, labels = load_fashion_mnist(split)
    for lo, hi in ((0, 1), (1, 8), (8, 48)):  # batches of 1, 7 and 40
        xs, ys = render(sample_params(0, split, range(lo, hi), items.shape[0]), items, labels)
        assert xs.dtype == torch.uint8 and ys.dtype == torch.int64
        assert torch.equal(xs, x[lo:hi]) and torch.equal(ys, y[lo:hi])
    with pytest.raises(ValueError, match="no sample indices"):
        sample_params(0, split, [], items.shape[0])


def test_drawn_batches_look_like_the_fixed_sets():
    items, labels = load_fashion_mnist("train")
    p = draw_params(256, torch.Generator().manual_seed(0), items.shape[0])
    assert len(p) == 256 and int(p.offsets.max()) <= 28 and int(p.picks.max()) < items.shape[0]
    x, y = render(p, items, labels)
    assert bool((x[:, 0][y > 0] > SILHOUETTE_LEVEL).all())  # every item pixel is a garment pixel
    assert int(x[:, 0][y == 0].max()) <= 90 and int(y.max()) <= 10  # background is texture, at most level 90
    xf, yf = load_mosaic("train", n=256)
    fg, fg_fixed = (y > 0).float().mean().item(), (yf > 0).float().mean().item()
    assert abs(fg - fg_fixed) < 0.03  # same share of item pixels (about 0.28) as the fixed set
    assert abs(x.float().mean().item() - xf.float().mean().item()) < 3.0
    counts = torch.bincount(y.flatten(), minlength=11)[1:]
    assert bool((counts > 0).all())  # all ten classes appear


def test_stream_batches_are_new_each_pass_and_flip_images_with_their_labels():
    from prunekit.zoo.train import _stream
    items, labels = load_fashion_mnist("train")
    batches = _stream(items[:500], labels[:500], 8, 2, shift=3)
    g = torch.Generator().manual_seed(0)
    first, second = list(batches(g)), list(batches(g))
    assert len(first) == 2 and first[0][0].shape == (8, 1, 56, 56) and first[0][1].shape == (8, 56, 56)
    assert not torch.equal(first[0][0], second[0][0])  # a second pass draws new mosaics
    level = normalize(torch.tensor(SILHOUETTE_LEVEL, dtype=torch.uint8)).item()
    for xb, yb in first + second:
        assert bool((xb[:, 0][yb > 0] > level).all())  # flips and shifts moved image and labels together


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rendering_on_cuda_matches_the_cpu():
    items, labels = load_fashion_mnist("train")
    p = draw_params(64, torch.Generator().manual_seed(1), items.shape[0])
    x, y = render(p, items, labels)
    xc, yc = render(p, items.cuda(), labels.cuda())
    assert xc.is_cuda and torch.equal(yc.cpu(), y)
    assert (xc.cpu().int() - x.int()).abs().max() <= 1  # sin may differ by an ulp, rounding by one level


def test_instance_map_marks_the_visible_pixels_of_each_item_with_its_slot():
    items, labels = load_fashion_mnist("train")
    p = sample_params(0, "train", range(16), items.shape[0])
    _, y = render(p, items, labels)
    ids = instance_map(p, items)
    assert torch.equal(ids >= 0, y > 0)  # an item pixel is exactly a labelled pixel
    for k in range(3):  # each slot's pixels carry its item's label
        cls = 1 + labels[p.picks[:, k]]
        assert bool((y[ids == k] == cls[:, None, None].expand_as(y)[ids == k]).all())
    assert bool((ids == 2).any()) and bool((ids == 0).any())  # top items visible; bottom ones partly
