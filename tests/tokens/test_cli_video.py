"""``prunekit merge --video saliency|tubes`` and ``prunekit tokens show --video saliency`` (the PNG strip)."""
import json

import numpy as np
import pytest
import torch

import prunekit
import prunekit.cli.merge as cli_merge
import prunekit.cli.tokens as cli_tokens
import prunekit.tokens as tokens
from prunekit.cli import build_parser, main
from prunekit.measure import count_macs
from prunekit.zoo import Workload
from prunekit.zoo.models import build


@pytest.fixture
def video_workload(monkeypatch):
    torch.manual_seed(0)
    model = build("motion-vivit").eval()
    x = torch.randn(2, 1, 8, 56, 56)
    y = torch.randint(0, 10, (2,))
    evaluate = lambda m, limit=None: {"top1": float((m(x).argmax(-1) == y).float().mean())}
    wl = Workload("tiny-video", model, (x,), evaluate, "video", "top1")
    monkeypatch.setattr(cli_merge, "resolve_model", lambda spec: wl)
    monkeypatch.setattr(cli_tokens, "resolve_model", lambda spec: wl)
    return wl


def test_merge_cli_video_saliency_round_trips_through_out(video_workload, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["merge", "v", "--video", "saliency", "--keep", "0.25", "--background-r", "90", "--r", "4",
                 "--repeats", "1", "--throughput-batch", "0", "--json", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tome = doc["tome"]
    assert tome["video"] == "saliency" and tome["keep"] == 0.25 and tome["early"] == 1 and tome["background_r"] == 90
    assert tome["r_per_layer"] == [90] + [4] * 7 and tome["tokens_per_layer"][0] == 107
    back = prunekit.load(out)
    assert back.prunekit_meta["merge"]["video"] == "saliency"
    with torch.no_grad():
        assert doc["macs"] == count_macs(back, video_workload.example_inputs)


@pytest.mark.parametrize("argv,says", [
    (["--video", "saliency", "--tubes", "30", "--r", "4"], "--video saliency with --tubes"),
    (["--video", "tubes", "--r", "4"], "it needs --tubes T"),
    (["--keep", "0.3", "--r", "4"], "add --video saliency"),
    (["--tubes", "30", "--background-r", "9", "--r", "4"], "add --video saliency"),
    (["--video", "saliency", "--windows", "20", "--r", "4"], "choose one"),
    (["--video", "saliency", "--keep", "1", "--r", "4"], "--keep 1: cannot merge: give a value in [0, 1)"),
    (["--video", "saliency", "--early", "0", "--r", "4"], "--early 0"),
    (["--video", "saliency", "--reducer", "evit", "--r", "4"], "use them with --reducer merge"),
])
def test_merge_cli_refuses_bad_combinations_before_building_a_model(argv, says, monkeypatch, capsys):
    monkeypatch.setattr(cli_merge, "resolve_model", lambda spec: pytest.fail("a model was built"))
    assert main(["merge", "m", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_merge_cli_reads_the_video_method_from_the_flags():
    def parse(*argv):
        return cli_merge.check_video(build_parser().parse_args(["merge", "m", "--r", "4", *argv]))
    assert parse("--tubes", "30") == "tubes" and parse("--video", "tubes", "--tubes", "30") == "tubes"
    assert parse("--video", "saliency") == "saliency" and parse() is None


def test_tokens_show_video_saliency_writes_a_strip(video_workload, tmp_path, capsys):
    from PIL import Image
    png = tmp_path / "strip.png"
    assert main(["tokens", "show", "v", "--video", "saliency", "--keep", "0.3", "--out", str(png)]) == 0
    assert "59 of 196 tokens kept out" in capsys.readouterr().out
    pixels = torch.tensor(np.asarray(Image.open(png).convert("L")), dtype=torch.float32)
    assert pixels.numel() > 100_000 and pixels.std() > 20          # drawn, not blank
    assert not tokens.is_patched(video_workload.model)
    assert main(["tokens", "show", "v", "--keep", "0.3"]) == 2       # saliency flags need --video saliency
    assert main(["tokens", "show", "v"]) == 2                        # neither --r nor --video
