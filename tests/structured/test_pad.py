"""Zero-padding pruned channel groups to a multiple (for onnxruntime's blocked conv kernels)."""
import pytest
import timm
import torch
from torch import nn

import prunekit
from prunekit.errors import PruningError
from prunekit.structured.pad import pad_channels


def _tol(ref: torch.Tensor) -> float:
    # float32 sums of up to ~1e4 terms reassociated by a differently blocked kernel: a few eps * sqrt(K)
    return 1e-5 * (1 + float(ref.abs().max()))


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_100"])
def test_a_pruned_timm_cnn_padded_to_8_gives_the_same_outputs(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    prunekit.prune(model, (x,), target_macs=0.5)
    odd = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels % 8]
    assert odd, "the cut should leave free widths"
    params = sum(p.numel() for p in model.parameters())
    ref = model(x).detach()
    res = pad_channels(model, (x,), multiple=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.out_channels % 8 == 0 for m in convs)
    assert all(m.in_channels % 8 == 0 for m in convs if m.in_channels > 3)
    assert (model(x) - ref).abs().max() <= _tol(ref)
    assert res["params_before"] == params < res["params_after"] == sum(p.numel() for p in model.parameters())
    assert res["padded_groups"] > 0 and res["channels_added"] > 0


def test_groups_read_by_a_layer_norm_are_left_alone():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    prunekit.prune(model, (x,), target_macs=0.5)
    stem = model.stem[0].out_channels  # the residual stream: LayerNorms normalise over it
    ref = model(x).detach()
    res = pad_channels(model, (x,), multiple=8)
    assert model.stem[0].out_channels == stem
    assert res["padded_groups"] > 0 and (model(x) - ref).abs().max() <= _tol(ref)


class ChannelMean(nn.Module):
    """Something that reads the channels without a weight: padding would change its mean."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)

    def forward(self, x):
        return self.conv(x).mean(1)


def test_padding_that_changes_the_outputs_is_refused_and_the_model_restored():
    torch.manual_seed(0)
    model = ChannelMean().eval()
    weight = model.conv.weight
    with pytest.raises(PruningError, match="padding changed the outputs"):
        pad_channels(model, (torch.randn(1, 3, 8, 8),))
    assert model.conv.weight is weight and model.conv.out_channels == 5


def test_nothing_to_pad_and_a_bad_multiple():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3)).eval()
    assert pad_channels(net, (torch.randn(1, 3, 8, 8),))["padded_groups"] == 0
    with pytest.raises(PruningError, match="at least 2"):
        pad_channels(net, (torch.randn(1, 3, 8, 8),), multiple=1)


class DividesByAScale(nn.Module):
    """A learned per-channel divisor (as a weight-normalised layer has): a zero-padded one gives 0/0."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 5, 3), nn.Conv2d(5, 4, 3)
        self.scale = nn.Parameter(torch.rand(5) + 0.5)

    def forward(self, x):
        return self.conv2(self.conv1(x) / self.scale.view(1, -1, 1, 1))


def test_padding_that_makes_nan_is_refused_and_export_falls_back_to_the_free_widths(tmp_path):
    pytest.importorskip("onnxruntime")
    from prunekit.export import export_onnx
    torch.manual_seed(0)
    model = DividesByAScale().eval()
    x = torch.randn(2, 3, 10, 10)
    with pytest.raises(PruningError, match="padding changed the outputs by inf"):
        pad_channels(model, (x,))
    assert model.conv1.out_channels == 5
    res = export_onnx(model, (x,), tmp_path / "m.onnx")
    assert res["padded"]["padded_groups"] == 0 and "inf" in res["padded"]["refused"]
    assert res["max_abs_diff"] <= res["tolerance"] and "round_to=8" in res["hints"][0]
