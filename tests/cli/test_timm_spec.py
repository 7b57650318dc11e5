"""``timm:<name>[@pretrained|@FILE]``: timm's own pretrained loading, tested on a local weights file."""
import pytest
import timm
import torch
from safetensors.torch import save_file

from prunekit import PruningError
from prunekit.cli import main
from prunekit.cli.common import origin_meta, resolve_model
from prunekit.cli.timm_spec import create_timm_model, parse_timm_spec


def test_parse_names_the_weights_after_the_at_sign():
    assert parse_timm_spec("timm:resnet18") == ("resnet18", None)
    assert parse_timm_spec("timm:resnet18.a1_in1k@pretrained") == ("resnet18.a1_in1k", "pretrained")
    assert parse_timm_spec("timm:resnet18@/w/r18.safetensors") == ("resnet18", "/w/r18.safetensors")


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_a_local_weights_file_loads_through_timm_pretrained_path(tmp_path, suffix):
    torch.manual_seed(0)
    trained = timm.create_model("test_resnet")
    state = {k: v.contiguous() for k, v in trained.state_dict().items()}
    path = tmp_path / f"w.{suffix}"
    save_file(state, path) if suffix == "safetensors" else torch.save(state, path)
    wl = resolve_model(f"timm:test_resnet@{path}")
    got = wl.model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k
    assert not wl.model.training
    assert origin_meta(wl)["timm"] == "test_resnet"  # the weights path is not the architecture


def test_random_weights_are_said_on_stderr(capsys):
    resolve_model("timm:test_resnet")
    assert "random weights" in capsys.readouterr().err


def test_a_missing_weights_file_is_one_line_before_any_model_is_built(tmp_path, capsys, monkeypatch):
    built = []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: built.append(a))
    assert main(["profile", f"timm:resnet18@{tmp_path}/nope.safetensors"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err and "@pretrained" in err
    assert built == []


def test_an_unreachable_hub_is_one_line_naming_the_local_file_fix(monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files\nmore detail")
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PruningError, match="couldn't connect.*timm:resnet18@weights.safetensors"):
        create_timm_model("timm:resnet18@pretrained")
    assert main(["profile", "timm:resnet18@pretrained"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_weights_of_another_model_are_refused_in_one_line(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(PruningError, match="state dict of timm's test_resnet"):
        create_timm_model(f"timm:test_resnet@{path}")
