"""`prunekit merge` / `prunekit tokens show` on a tiny timm ViT, and the merge visualisation helpers."""
import json

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import prunekit.cli.merge as cli_merge
import prunekit.cli.tokens as cli_tokens
from prunekit.cli import main
from prunekit.tokens import is_patched
from prunekit.tokens.show import group_image, merge_groups, patch_grid
from prunekit.zoo import Workload


def tiny_workload(name="tiny-vit"):
    torch.manual_seed(0)
    model = VisionTransformer(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=3, num_heads=2,
                              num_classes=10).eval()
    x = torch.randn(4, 1, 28, 28)
    y = torch.randint(0, 10, (4,))
    evaluate = lambda m, limit=None: {"top1": float((m(x).argmax(-1) == y).float().mean())}
    return Workload(name, model, (x,), evaluate, "classification", "top1")


@pytest.fixture
def workload(monkeypatch):
    wl = tiny_workload()
    monkeypatch.setattr(cli_merge, "resolve_model", lambda spec: wl)
    monkeypatch.setattr(cli_tokens, "resolve_model", lambda spec: wl)
    return wl


def test_merge_cli_json_shape(workload, capsys):
    assert main(["merge", "tiny", "--r", "6", "--json", "--repeats", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("params", "macs", "latency_ms", "batch_size", "threads", "metric", "dense", "ratios"):
        assert key in out
    assert out["batch_size"] == 4 and out["tome"]["r"] == 6
    assert out["ratios"]["macs"] < 0.9 and out["macs"] < out["dense"]["macs"]
    assert out["params"] == out["dense"]["params"] and "top1" in out["metric"]
    assert is_patched(workload.model)


def test_merge_cli_says_when_r_is_clamped(workload, capsys):
    # 49 patches + 1 class token: r=6 fits all 3 layers (49 -> 43 -> 37 -> 31); r=40 cannot
    assert main(["merge", "tiny", "--r", "6", "--json", "--repeats", "1"]) == 0
    tome = json.loads(capsys.readouterr().out)["tome"]
    assert tome["r_per_layer"] == [6, 6, 6] and tome["tokens_per_layer"] == [44, 38, 32] and "clamped" not in tome
    assert main(["merge", "tiny", "--r", "40", "--json", "--repeats", "1"]) == 0
    captured = capsys.readouterr()
    tome = json.loads(captured.out)["tome"]
    assert tome["clamped"] and tome["r_per_layer"] == [24, 12, 6]  # half of the 49, 25, 13 unprotected tokens
    assert "--r 40 is more than some layers can merge" in captured.err


def test_merge_cli_target_macs(workload, capsys):
    assert main(["merge", "tiny", "--target-macs", "0.7", "--json", "--repeats", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ratios"]["macs"] <= 0.7 and out["tome"]["r"] > 0


def test_merge_cli_local_windows(workload, capsys):
    assert main(["merge", "tiny", "--windows", "6", "--r", "2", "--json", "--repeats", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tome"]["windows"] == 6 and out["tome"]["tubes"] is None
    assert out["ratios"]["macs"] < 0.8 and is_patched(workload.model)


def test_merge_cli_refuses_tubes_on_an_image_model(workload, capsys):
    assert main(["merge", "tiny", "--tubes", "4", "--r", "2", "--repeats", "2"]) == 2
    assert "one time slice" in capsys.readouterr().err
    assert not is_patched(workload.model)


def test_tokens_show_writes_png(workload, tmp_path, capsys):
    png = tmp_path / "merged.png"
    assert main(["tokens", "show", "tiny", "--r", "8", "--out", str(png)]) == 0
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert "49 patches -> " in capsys.readouterr().out
    assert not is_patched(workload.model)


def test_merge_groups_and_group_image():
    wl = tiny_workload()
    assert patch_grid(wl.model) == (7, 7)
    labels = merge_groups(wl.model, wl.example_inputs[0][0], r=8)
    # 49 patches, r clipped per layer: 8, 8, 8 -> 25 patch tokens left
    assert labels.shape == (7, 7) and labels.unique().numel() == 49 - 24
    assert torch.equal(labels.unique(), torch.arange(25))
    img = torch.rand(1, 28, 28)
    painted = group_image(img, labels)
    assert painted.shape == img.shape
    # every token is one flat colour and the image mean is preserved (equal-size patches)
    assert torch.allclose(painted.mean(), img.mean(), atol=1e-5)
    up = labels.repeat_interleave(4, 0).repeat_interleave(4, 1)
    for t in range(25):
        vals = painted[0][up == t]
        assert torch.allclose(vals, vals[0].expand_as(vals))
    assert not is_patched(wl.model)


def test_tokens_show_on_a_detector_draws_its_true_and_predicted_boxes(tmp_path, monkeypatch):
    import matplotlib.image

    from prunekit.zoo.detvit import build_detvit
    from prunekit.zoo.registry import example_inputs
    torch.manual_seed(0)
    model = build_detvit().eval()   # random weights: mosaic-det is not trained yet; the drawing is what is tested
    x = example_inputs("mosaic-det")[0]
    wl = Workload("mosaic-det", model, (x,), None, "detection", "map")
    boxes = cli_tokens.detection_boxes(wl, 1, x[1], r=4, min_score=0.0)
    assert boxes["truth"].shape[1] == 4 and 2 <= len(boxes["truth"]) <= 6    # 2-6 garments per mosaic
    assert boxes["predicted"].shape == (100, 4)                              # the top 100 peaks, score >= 0
    assert not is_patched(model)
    monkeypatch.setattr(cli_tokens, "resolve_model", lambda name: wl)
    out = tmp_path / "det.png"
    assert main(["tokens", "show", "mosaic-det", "--r", "4", "--index", "1", "--out", str(out)]) == 0
    img = matplotlib.image.imread(out)
    green = (img[..., 1] > 0.6) & (img[..., 0] < 0.35) & (img[..., 2] < 0.45)   # the ground-truth outlines
    assert green.sum() > 100
    assert not is_patched(model)
