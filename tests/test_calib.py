"""One calib= form for Wanda (sparsify), block influence (drop_layers) and Taylor (prune)."""
import copy
import doctest

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit
import prunekit.calib as calib_module
from prunekit import PruningError
from prunekit.calib import calib_batches, split_targets


def test_docstring_examples_run():
    assert doctest.testmod(calib_module).failed == 0


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 16), nn.ReLU()),
                         nn.Linear(16, 3)).eval()


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(24, 8, generator=g), torch.randint(0, 3, (24,), generator=g)


def test_one_batch_forms_and_iterables():
    x, y = data()
    assert calib_batches(x) == [x]
    assert len(calib_batches((x, x))) == 1            # a tuple of tensors: positional args of one batch
    assert len(calib_batches({"a": x})) == 1
    assert len(calib_batches([x, x, x])) == 3
    assert len(calib_batches(DataLoader(TensorDataset(x, y), batch_size=8))) == 3
    assert len(calib_batches(iter([x, x]))) == 2


@pytest.mark.parametrize("bad, match", [(None, "needs calib="), ([], "calib is empty"), (3.0, "calib is a float"),
                                        ([torch.ones(1), "text"], "calib batch 1 is a str")])
def test_bad_calib_is_one_line_naming_the_form(bad, match):
    with pytest.raises(PruningError, match=match):
        calib_batches(bad, "net", "calibrate")


def test_targets_are_split_only_when_they_are_one_label_per_sample():
    x, y = data()
    assert split_targets((x, y))[1] is y
    assert split_targets([{"input_ids": x.long()}, y])[1] is y
    mask = torch.ones(24, 8, dtype=torch.long)          # a 2-D integer tensor is an input (attention mask)
    assert split_targets((x, mask)) == ((x, mask), None)
    assert split_targets((x, y[:5]))[1] is None         # not one label per sample
    assert split_targets((x, y.float()))[1] is None


def test_wanda_reads_a_tensor_a_list_and_a_labelled_loader_alike():
    x, y = data()
    masks = []
    for calib in (x, [x[:8], x[8:16], x[16:]], DataLoader(TensorDataset(x, y), batch_size=8)):
        m = net()
        prunekit.sparsify(m, 0.5, criterion="wanda", calib=calib, ignore=[])
        masks.append([(p == 0) for p in m.parameters() if p.dim() == 2])
    for other in masks[1:]:   # same squared-norm sums, whatever the batching
        assert all(torch.equal(a, b) for a, b in zip(masks[0], other, strict=True))


def test_block_influence_reads_a_labelled_loader_like_its_inputs():
    x, y = data()
    seq = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(4)])
    from prunekit.structured.blocks import block_influence
    blocks = ["0", "1", "2", "3"]
    a = block_influence(copy.deepcopy(seq), [x], blocks=blocks)
    b = block_influence(copy.deepcopy(seq), DataLoader(TensorDataset(x, y), batch_size=24), blocks=blocks)
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)


def test_taylor_uses_the_labels_of_a_loader():
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    kept = []
    for calib in (loader, [(x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]):
        m = net()
        prunekit.prune(m, (x[:2],), ratio=0.25, criterion="taylor", calib=calib)
        kept.append([p.detach().clone() for p in m.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*kept, strict=True))
    with pytest.raises(PruningError, match="needs calib="):
        prunekit.prune(net(), (x[:2],), ratio=0.25, criterion="taylor")
