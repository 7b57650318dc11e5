import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import PruningError
from prunekit.sparse.owl import OWL, allocate, block_groups, outlier_share, owl_ratios


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("sparsity,band", [(0.5, 0.08), (0.7, 0.08), (0.05, 0.08), (0.95, 0.1)])
def test_ratios_average_to_the_target_within_the_band(seed, sparsity, band):
    g = torch.Generator().manual_seed(seed)
    shares = torch.rand(12, generator=g).pow(3).tolist()  # skewed: a few layers with many outliers
    sizes = torch.randint(100, 100_000, (12,), generator=g).tolist()
    ratios = owl_ratios(shares, sizes, sparsity, band)
    mean = sum(r * n for r, n in zip(ratios, sizes, strict=True)) / sum(sizes)
    assert mean == pytest.approx(sparsity, rel=0, abs=1e-12)  # solved in closed form once the clipping is known
    lo, hi = max(0.0, sparsity - band), min(1.0, sparsity + band)
    assert all(lo <= r <= hi for r in ratios)
    order = sorted(range(12), key=lambda i: shares[i])  # fewer outliers, higher sparsity
    assert all(ratios[a] >= ratios[b] for a, b in zip(order, order[1:], strict=False))
    units = allocate(ratios, sizes, round(sparsity * sum(sizes)))
    assert sum(units) == round(sparsity * sum(sizes))
    assert all(abs(k - r * n) <= 1 for k, r, n in zip(units, ratios, sizes, strict=True))


def test_ratios_span_the_band_when_one_shift_fits():
    ratios = owl_ratios([0.0, 0.5, 1.0], [10, 10, 10], 0.6, 0.08)
    assert ratios == pytest.approx([0.68, 0.6, 0.52], abs=1e-12)
    assert owl_ratios([0.2, 0.2], [3, 4], 0.6, 0.08) == [0.6, 0.6]  # no outlier differences: uniform


def test_outlier_share_counts_above_threshold_times_mean():
    score = torch.ones(100)
    score[:3] = 50.0  # mean 2.47: 3 scores above 5 * 2.47
    assert outlier_share(score, 5.0) == 0.03
    assert outlier_share(score, 25.0) == 0.0


def _planted():
    """Three equal layers; layer 2's weights carry 2% large outliers, layer 0 none."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64),
                        nn.Linear(64, 2)).eval()
    with torch.no_grad():
        for i, n_out in ((2, 41), (4, 82)):
            idx = torch.randperm(64 * 64)[:n_out]
            net[i].weight.view(-1)[idx] *= 40.0
    return net


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_owl_gives_more_sparsity_to_layers_with_fewer_outliers(criterion):
    net = _planted()
    x = torch.randn(256, 64)
    res = prunekit.sparsify(net, 0.7, criterion=criterion, scope="owl", calib=x)
    zeros = sum(int((net[i].weight == 0).sum()) for i in (0, 2, 4))
    assert zeros == round(0.7 * 3 * 4096) == 8602  # the global count, exactly
    assert res.scope == "owl" and res.total == round(8602 / 12288, 6)
    s = res.layers
    assert s["0"] > s["2"] > s["4"]
    # the most outliers sit at the band's floor, 0.7 - 0.08; the one shift that fixes the mean moves the rest
    assert s["4"] == pytest.approx(0.62, abs=1 / 4096) and 0.7 < s["0"] <= 0.78


def test_owl_with_blocks_counts_whole_tiles():
    net = _planted()
    res = prunekit.sparsify(net, 0.5, criterion="wanda", scope=OWL(band=0.1), pattern="block:4x4",
                            calib=torch.randn(128, 64))
    assert res.total == 0.5 and res.layers["0"] > res.layers["4"]
    for i in (0, 2, 4):
        tiles = net[i].weight.reshape(16, 4, 16, 4).permute(0, 2, 1, 3).flatten(2).ne(0)
        assert torch.all(tiles.all(-1) | ~tiles.any(-1))


def test_owl_wanda_prunes_within_rows():
    net = _planted()
    x = torch.randn(128, 64)
    prunekit.sparsify(net, 0.7, criterion="wanda", scope="owl", calib=x)
    per_row = (net[0].weight == 0).sum(1)
    assert int(per_row.max() - per_row.min()) <= 1  # the layer's count spread evenly over its rows


def test_owl_zero_band_is_uniform():
    net = _planted()
    res = prunekit.sparsify(net, 0.6, criterion="magnitude", scope=OWL(band=0.0), calib=torch.randn(128, 64))
    # 0.6 * 4096 = 2457.6 per layer: 2457 each, and the 2 left of the global round(7372.8) = 7373 go to two layers
    assert sorted(int((~net[i].weight_mask).sum()) for i in (0, 2, 4)) == [2457, 2458, 2458]
    assert res.total == round(7373 / 12288, 6)


BAD = [
    (dict(scope="owl"), "scope='owl' needs calib="),
    (dict(scope="owl", pattern="2:4", sparsity=None, calib=torch.randn(8, 64)), "pattern 2:4 fixes every layer's"),
    (dict(scope="outliers", calib=torch.randn(8, 64)), "unknown scope 'outliers'"),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_bad_owl_input_is_one_line_and_leaves_the_model_unchanged(unchanged, kwargs, message):
    net = _planted()
    check = unchanged(net)
    kwargs = {"sparsity": 0.5, **kwargs}
    with pytest.raises(PruningError, match=message) as info:
        prunekit.sparsify(net, kwargs.pop("sparsity"), **kwargs)
    assert "\n" not in str(info.value) and check()


def test_owl_settings_are_checked():
    with pytest.raises(ValueError, match="threshold must be a number > 0"):
        OWL(threshold=0)
    with pytest.raises(ValueError, match="band must be a number >= 0"):
        OWL(band=-0.1)


def test_owl_sparsegpt_keeps_zeros_and_masks_in_step():
    net = _planted()
    dense = copy.deepcopy(net)
    x = torch.randn(256, 64)
    prunekit.sparsify(net, 0.7, criterion="sparsegpt", scope="owl", calib=x)
    for i in (0, 2, 4):
        assert torch.all(net[i].weight[~net[i].weight_mask] == 0)
        assert not torch.equal(net[i].weight[net[i].weight_mask], dense[i].weight[net[i].weight_mask])


def test_block_groups_innermost_block_and_loose_layers():
    names = ["stem", "stages.0.blocks.0.fc", "stages.0.blocks.1.fc", "stages.0.down", "stages.1.blocks.0.fc"]
    blocks = ["stages.0", "stages.1", "stages.0.blocks.0", "stages.0.blocks.1", "stages.1.blocks.0"]
    assert block_groups(names, blocks) == [[0], [1], [2], [3], [4]]
    assert block_groups(names, ["stages.0", "stages.1"]) == [[0], [1, 2, 3], [4]]


class Blocks(nn.Module):
    """Three blocks of two Linear layers in a ModuleList, like a transformer's; block 2 has planted outliers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)) for _ in range(3))
        self.head = nn.Linear(64, 2)
        with torch.no_grad():
            idx = torch.randperm(64 * 64)[:82]
            self.blocks[2][0].weight.view(-1)[idx] *= 40.0

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def test_owl_gives_one_ratio_per_block_by_default():
    net = Blocks().eval()
    x = torch.randn(256, 64)
    res = prunekit.sparsify(net, 0.6, criterion="wanda", scope="owl", calib=x)
    s = res.layers
    for b in range(3):  # the block's two layers share its ratio (to the one weight its rounding moves)
        assert abs(s[f"blocks.{b}.0"] - s[f"blocks.{b}.2"]) <= 1 / 4096
    assert s["blocks.2.0"] == pytest.approx(0.52, abs=1 / 4096) and s["blocks.2.0"] < min(s["blocks.0.0"],
                                                                                          s["blocks.1.0"])
    zeros = sum(int((~m.weight_mask).sum()) for n, m in net.named_modules() if hasattr(m, "weight_mask"))
    assert zeros == round(0.6 * 6 * 4096)
    per_layer = prunekit.sparsify(Blocks().eval(), 0.6, criterion="wanda", scope=OWL(blocks=False), calib=x)
    assert per_layer.layers["blocks.2.0"] < per_layer.layers["blocks.2.2"]  # the outliers sit in the first layer
