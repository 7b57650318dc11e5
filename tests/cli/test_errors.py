"""The command line's one error path: one line on stderr, exit code 2, no traceback, before any model is built."""
import os

import pytest

from prunekit.cli import main


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model gets built: these inputs must be refused first."""
    import prunekit.cli.common as C

    def refuse(spec):
        raise AssertionError("a model was built before the arguments were checked")
    for mod in ("prune", "merge", "sparsify", "profile", "finetune"):
        monkeypatch.setattr(f"prunekit.cli.{mod}.resolve_model", refuse)
    return C


@pytest.mark.parametrize("argv,expect", [
    (["prune", "fmnist-resnet", "--ratio", "1.5", "--out", "x.safetensors"],
     "--ratio 1.5: cannot prune: give a value in [0, 1)"),
    (["prune", "fmnist-resnet", "--ratio", "-0.1", "--out", "x.safetensors"], "--ratio -0.1"),
    (["prune", "fmnist-resnet", "--target-macs", "0", "--out", "x.safetensors"], "give a value in (0, 1]"),
    (["merge", "fmnist-vit", "--r", "-1"], "--r -1: cannot merge"),
    (["merge", "fmnist-vit", "--target-macs", "1.5"], "--target-macs 1.5"),
    (["sparsify", "fmnist-resnet", "--sparsity", "1.2", "--out", "x.safetensors"], "sparsity"),
    (["prune", "fmnist-resnet", "--ratio", "0.5", "--out", "/proc/no/x.safetensors"], "cannot create the folder"),
    (["--data-dir", "/no/such/dir", "profile", "fmnist-resnet"], "--data-dir /no/such/dir is not a directory"),
])
def test_bad_arguments_are_refused_in_one_line(argv, expect, no_model, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"prunekit {argv[2] if argv[0] == '--data-dir' else argv[0]}: ")
    assert expect in err[0]


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_broken_model_files_are_one_line(content, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    assert main(["profile", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.safetensors" in err[0] and "Traceback" not in err[0]


def test_unknown_models_name_the_fix(capsys):
    assert main(["profile", "timm:resnet18x"]) == 2
    assert "timm has no such model" in capsys.readouterr().err
    assert main(["profile", "nosuchmodel"]) == 2
    assert "use a zoo name" in capsys.readouterr().err


def test_debug_shows_the_traceback():
    from prunekit.errors import PruningError
    with pytest.raises(PruningError, match="timm has no such model"):
        main(["--debug", "profile", "timm:resnet18x"])


def test_a_wrong_data_directory_is_not_silently_ignored(tmp_path, monkeypatch):
    from prunekit.data import fashion_mnist as fm
    from prunekit.errors import DataNotFoundError
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="not found where you said"):
        fm.find_fashion_mnist()


def test_data_dir_and_threads_are_restored_after_the_command(tmp_path):
    import torch
    before_env, before_threads = os.environ.get("PRUNEKIT_DATA"), torch.get_num_threads()
    main(["--data-dir", str(tmp_path), "--threads", "1", "zoo", "list"])
    assert os.environ.get("PRUNEKIT_DATA") == before_env and torch.get_num_threads() == before_threads


def test_a_cut_that_removes_nothing_fails_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "h.safetensors"
    assert main(["prune", "fmnist-resnet", "--units", "heads", "--ratio", "0.3", "--out", str(out), "--limit", "10",
                 "--repeats", "1"]) == 2
    assert "nothing was removed: no group of heads could be cut" in capsys.readouterr().err
    assert not out.exists()


def test_profile_and_prune_accept_any_saved_model(tmp_path, capsys):
    import json

    import timm
    import torch

    import prunekit
    path = tmp_path / "tiny.safetensors"
    prunekit.save(timm.create_model("resnet18", num_classes=3).eval(), path, meta={"input_size": [3, 32, 32]})
    assert main(["profile", str(path), "--json", "--repeats", "1"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["macs"] > 0 and doc["metric"] == {}
    out = tmp_path / "cut.safetensors"
    assert main(["prune", str(path), "--ratio", "0.5", "--out", str(out), "--json", "--repeats", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ratios"]["macs"] < 0.5
    assert prunekit.load(out)(torch.randn(1, 3, 32, 32)).shape == (1, 3)
