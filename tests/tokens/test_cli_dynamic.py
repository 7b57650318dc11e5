"""``prunekit tokens dynamic``: trains DynamicViT on the zoo's data, measures it in one run, saves a file that loads."""
import json

import pytest
import torch

import prunekit
from prunekit.cli import main
from prunekit.cli.common import JSON_KEYS
from prunekit.measure import count_macs
from prunekit.zoo import load, read_manifest


@pytest.mark.skipif("fmnist-vit" not in read_manifest(), reason="no fmnist-vit checkpoint shipped")
def test_tokens_dynamic_trains_measures_and_saves(tmp_path, capsys):
    out = tmp_path / "dyn.safetensors"
    assert main(["tokens", "dynamic", "fmnist-vit", "--keep", "0.7", "--fit-epochs", "0.0003", "--batch", "8",
                 "--limit", "40", "--repeats", "1", "--throughput-batch", "16", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(JSON_KEYS) <= set(doc) and doc["method"] == "tokens dynamic"
    assert doc["dynamic"]["steps"] == 2 and doc["dynamic"]["stages"] == [3, 6, 9]
    assert doc["macs"] < 0.75 * doc["dense"]["macs"]  # 0.7 of the tokens kept at blocks 3, 6 and 9
    back = prunekit.load(out).eval()
    assert type(back).__name__ == "DynamicViT" and back.prunekit_meta["dynamic"]["keep"] == 0.7
    x = load("fmnist-vit").example_inputs
    assert count_macs(back, x) == doc["macs"]
    with torch.no_grad():
        assert back(*x).shape == (8, 10)


def test_tokens_dynamic_topk_sampling_trains_on_exactly_the_inference_counts(tmp_path, capsys):
    out = tmp_path / "dyn.safetensors"
    assert main(["tokens", "dynamic", "fmnist-vit", "--sampling", "topk", "--fit-epochs", "0.0003", "--batch", "8",
                 "--limit", "16", "--repeats", "1", "--throughput-batch", "8", "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["dynamic"]
    assert info["sampling"] == "topk" and info["steps"] == 2
    assert info["kept_per_stage"] == [round(c / 196, 4) for c in (137, 96, 67)]   # 0.7, 0.49, 0.343 of 196
    assert prunekit.load(out).sampling == "topk"


def test_tokens_dynamic_refuses_a_bad_keep_before_building_anything(capsys):
    argv = ["tokens", "dynamic", "fmnist-vit", "--keep", "1.5", "--fit-epochs", "1", "--out", "x.safetensors"]
    assert main(argv) == 2
    assert "--keep" in capsys.readouterr().err


def test_tokens_dynamic_resume_without_a_checkpoint_is_refused_up_front(tmp_path, capsys):
    argv = ["tokens", "dynamic", "fmnist-vit", "--fit-epochs", "1", "--resume",
            "--out", str(tmp_path / "d.safetensors")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint to continue from" in err[0]


@pytest.mark.skipif("fmnist-vit" not in read_manifest(), reason="no fmnist-vit checkpoint shipped")
def test_tokens_dynamic_writes_checkpoints_and_resumes(tmp_path, capsys):
    """A finished run resumed continues from its last checkpoint: no step is trained again, same weights."""
    first, again, ck = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "ck"
    base = ["tokens", "dynamic", "fmnist-vit", "--batch", "8", "--limit", "16", "--repeats", "1",
            "--throughput-batch", "8", "--checkpoint-dir", str(ck), "--fit-epochs", "0.0003", "--json"]
    assert main([*base, "--out", str(first)]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["dynamic"]["steps"] == 2 and any(ck.iterdir())
    assert len(doc["dynamic"]["kept_per_stage"]) == 3 and doc["dynamic"]["kept_targets"][0] == 0.7
    assert main([*base, "--out", str(again), "--resume"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["dynamic"]["steps"] == 0  # both steps were already in the checkpoint
    a, b = prunekit.load(first).state_dict(), prunekit.load(again).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
