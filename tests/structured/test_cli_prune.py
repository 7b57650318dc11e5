
"""``prunekit prune``: prints the profile shape (dense + ratios) and saves a loadable model."""
from __future__ import annotations

import json
import re

import torch

import prunekit
from prunekit.cli import main


def test_cli_prune_timm_json_and_saved_model(tmp_path, capsys):
    out = tmp_path / "pruned.safetensors"
    assert main(["prune", "timm:test_resnet", "--ratio", "0.3", "--out", str(out), "--json", "--repeats", "2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("params", "macs", "latency_ms", "batch_size", "threads", "metric", "dense", "ratios", "prune"):
        assert key in res
    assert res["ratios"]["macs"] <= 0.8 and res["params"] < res["dense"]["params"]
    assert res["prune"]["groups_pruned"] > 0
    back = prunekit.load(out)
    assert back.prunekit_meta["timm"] == "test_resnet"
    size = back.pretrained_cfg["input_size"]
    assert back.eval()(torch.randn(1, *size)).shape == (1, back.num_classes)


def test_cli_prune_target_macs(tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    main(["prune", "timm:test_vit", "--target-macs", "0.6", "--out", str(out), "--json", "--repeats", "2"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(res["ratios"]["macs"] - 0.6) <= 0.02 * 0.6


def test_cli_prune_on_failure_skip_reports_what_it_left(tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    main(["prune", "timm:test_resnet", "--ratio", "0.3", "--on-failure", "skip", "--out", str(out), "--json",
          "--repeats", "1"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["prune"]["skipped"] == [] and res["ratios"]["macs"] <= 0.8


def test_cli_prune_slimming_trains_with_the_penalty_then_cuts_by_bn_scale(tmp_path, capsys):
    out = tmp_path / "slim.safetensors"
    code = main(["prune", "fmnist-resnet", "--target-macs", "0.5", "--slimming-epochs", "0.01",
                 "--slimming-strength", "1e-3", "--limit", "64", "--repeats", "1", "--json", "--out", str(out)])
    assert code == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["prune"]["criterion"] == "bn_scale"
    assert res["prune"]["slimming"]["steps"] == 4 and res["prune"]["slimming"]["strength"] == 1e-3
    assert abs(res["ratios"]["macs"] - 0.5) <= 0.02 * 0.5
    assert prunekit.load(out).prunekit_meta["prune"]["slimming"]["steps"] == 4


def test_cli_prune_slimming_refusals_name_the_fix(tmp_path, capsys):
    assert main(["prune", "fmnist-vit", "--ratio", "0.3", "--slimming-epochs", "1", "--out", str(tmp_path / "x")]) == 2
    assert re.search("no affine BatchNorm", capsys.readouterr().err)
    assert main(["prune", "timm:test_resnet", "--ratio", "0.3", "--slimming-epochs", "1", "--out",
                str(tmp_path / "x")]) == 2
    assert re.search("slimming_penalty\\(model\\) to your own", capsys.readouterr().err)


def test_cli_prune_in_rounds_trains_between_the_cuts(tmp_path, capsys):
    out = tmp_path / "iter.safetensors"
    main(["prune", "fmnist-resnet", "--target-macs", "0.4", "--rounds", "2", "--finetune-epochs", "0.02",
          "--limit", "64", "--repeats", "1", "--json", "--out", str(out)])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["prune"]["rounds"] == 2 and [r["steps"] for r in res["prune"]["finetune_rounds"]] == [4, 4]
    assert abs(res["ratios"]["macs"] - 0.4) <= 0.02 * 0.4


def test_cli_prune_rounds_refusals(tmp_path, capsys):
    assert main(["prune", "fmnist-resnet", "--ratio", "0.3", "--rounds", "3", "--out", str(tmp_path / "x")]) == 2
    assert re.search("give --finetune-epochs", capsys.readouterr().err)
    assert main(["prune", "timm:test_resnet", "--ratio", "0.3", "--rounds", "2", "--finetune-epochs", "1",
              "--out", str(tmp_path / "x")]) == 2
    assert re.search("training it needs data: give --data", capsys.readouterr().err)
