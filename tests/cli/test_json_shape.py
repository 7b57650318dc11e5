"""Every verb's ``--json`` is one object with the same top-level keys, timed dense vs compressed in one run."""
import json

import pytest
import torch

import prunekit
from prunekit.cli import main
from prunekit.cli.common import JSON_KEYS

MEASURE = ["--limit", "20", "--repeats", "1", "--throughput-batch", "16", "--json"]


def _doc(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("verb,model,args,method", [
    ("profile", "fmnist-resnet", [], "dense"),
    ("prune", "fmnist-resnet", ["--target-macs", "0.5", "--out", "{tmp}/p.safetensors"], "prune"),
    ("sparsify", "fmnist-resnet", ["--sparsity", "0.5", "--out", "{tmp}/s.safetensors"], "sparsify"),
    ("drop-layers", "fmnist-resnet", ["--n", "1", "--criterion", "last"], "drop-layers"),
    ("merge", "fmnist-vit", ["--r", "4"], "merge"),
])
def test_every_verb_prints_the_same_keys(verb, model, args, method, tmp_path, capsys):
    argv = [verb, model, *[a.format(tmp=tmp_path) for a in args], *MEASURE]
    assert main(argv) == 0
    doc = _doc(capsys)
    assert set(JSON_KEYS) <= set(doc) and doc["method"] == method and doc["model"] == model
    dense = doc["dense"]
    assert set(JSON_KEYS) - {"dense"} <= set(dense) and dense["method"] == "dense"
    # the speed-up is the ratio of the two latencies printed, and images/s is at the throughput batch
    assert doc["speedup"] == pytest.approx(dense["latency_ms"] / doc["latency_ms"], abs=2e-3)
    assert doc["throughput_batch"] == 16 and doc["throughput"] > 0 and dense["throughput"] > 0
    # images/s are printed to 0.1 and the speed-up to 0.001: the ratio of the printed images/s may differ
    # from the printed speed-up by those roundings (relative 0.05 / images/s each, plus 5e-4)
    ratio = doc["throughput"] / dense["throughput"]
    rounding = ratio * (0.05 / doc["throughput"] + 0.05 / dense["throughput"]) + 5e-4
    assert doc["throughput_speedup"] == pytest.approx(ratio, abs=rounding * 1.001)
    assert isinstance(doc["metric"], dict) and 0 <= doc["metric"]["top1"] <= 1
    if method == "dense":
        assert doc["speedup"] == 1.0 and dense["macs"] == doc["macs"]
    elif method in ("prune", "drop-layers", "merge"):
        assert doc["macs"] < dense["macs"]


def test_merge_out_saves_a_model_that_merges_the_same_way_after_load(tmp_path, capsys):
    from prunekit.tokens import is_patched, schedule_of
    from prunekit.zoo import load
    out = tmp_path / "m.safetensors"
    assert main(["merge", "fmnist-vit", "--r", "6", "--out", str(out), *MEASURE]) == 0
    doc = _doc(capsys)
    back = prunekit.load(out).eval()
    assert is_patched(back) and back.prunekit_meta["merge"]["r"] == 6 and doc["out"] == str(out)
    wl = load("fmnist-vit")
    prunekit.tokens.merge(wl.model, r=6)
    x = wl.example_inputs
    with torch.no_grad():
        assert torch.equal(back(*x), wl.model(*x))
    assert repr(schedule_of(back)) == repr(schedule_of(wl.model))


@pytest.mark.parametrize("how", [["--windows", "20", "--r", "4"], ["--tubes", "30", "--r", "4"]])
def test_local_merges_round_trip_through_merge_out(how, tmp_path, capsys):
    from prunekit.zoo import load, read_manifest
    name = "mosaic-segvit" if how[0] == "--windows" else "motion-vivit"
    if name not in read_manifest():
        pytest.skip(f"no {name} checkpoint shipped")
    out = tmp_path / "m.safetensors"
    assert main(["merge", name, *how, "--out", str(out), *MEASURE]) == 0
    doc = _doc(capsys)
    back = prunekit.load(out).eval()
    x = load(name).example_inputs
    assert back.prunekit_meta["merge"][how[0][2:]] == int(how[1])
    with torch.no_grad():
        assert doc["macs"] == prunekit.measure.count_macs(back, x)  # it merges as it did before the save


def test_merge_reducer_evit_saves_and_reloads_the_same_token_counts(tmp_path, capsys):
    out = tmp_path / "evit.safetensors"
    assert main(["merge", "fmnist-vit", "--r", "8", "--reducer", "evit", "--out", str(out), *MEASURE]) == 0
    doc = _doc(capsys)
    assert doc["tome"]["reducer"] == "evit" and doc["tome"]["prop_attn"] is False
    assert doc["tome"]["tokens_per_layer"] == [197 - 8 * (i + 1) for i in range(12)]
    back = prunekit.load(out)
    x = prunekit.zoo.load("fmnist-vit").example_inputs
    assert doc["macs"] == prunekit.measure.count_macs(back, x)
    assert main(["merge", "fmnist-vit", "--r", "8", "--reducer", "drop", "--tubes", "3"]) == 2
    assert "use them with --reducer merge" in capsys.readouterr().err
