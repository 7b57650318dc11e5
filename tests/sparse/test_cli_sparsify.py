import json
import re

import torch
from torch import nn

import prunekit
from prunekit.cli import main
from prunekit.cli import sparsify as cli_sparsify
from prunekit.zoo import Workload


def _workload():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4)).eval()
    x = torch.randn(8, 64)
    ref = model(x).argmax(-1)
    evaluate = lambda m, limit=None: {"agree": float((m(x).argmax(-1) == ref).float().mean())}
    return Workload("tiny", model, (x,), evaluate, "classification", "agree")


def test_cli_sparsify_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_sparsify, "resolve_model", lambda spec: _workload())
    out = tmp_path / "tiny.safetensors"
    code = main(["sparsify", "tiny", "--sparsity", "0.9", "--out", str(out), "--json", "--repeats", "2"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("params", "macs", "latency_ms", "batch_size", "threads", "metric", "dense", "ratios"):
        assert key in res
    assert res["sparsity"]["achieved"] == 0.9 and res["sparsity"]["method"] == "magnitude"
    assert res["nonzero_params"] < 0.2 * res["dense"]["nonzero_params"]
    assert res["file_bytes"] == out.stat().st_size and res["ratios"]["file"] <= 0.2
    back = prunekit.load(out)
    assert back.prunekit_meta["sparsify"]["sparsity"] == 0.9
    assert prunekit.sparsity_report(back).layers["2"]["sparsity"] > 0.85


def test_cli_sparsify_nm_wanda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_sparsify, "resolve_model", lambda spec: _workload())
    out = tmp_path / "nm.safetensors"
    main(["sparsify", "tiny", "--method", "wanda", "--pattern", "2:4", "--out", str(out), "--repeats", "1"])
    captured = capsys.readouterr()
    text = captured.out
    assert "sparsity" in text and "2:4" in text and "wanda" in text
    assert "--method is deprecated, use --criterion" in captured.err  # the old spelling still works
    w = prunekit.load(out)[2].weight
    assert int(w.reshape(-1, 4).ne(0).sum(1).max()) <= 2


def test_cli_sparsegpt_with_owl_ratios(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_sparsify, "resolve_model", lambda spec: _workload())
    out = tmp_path / "gpt.safetensors"
    code = main(["sparsify", "tiny", "--sparsity", "0.6", "--criterion", "sparsegpt", "--scope", "owl",
                 "--out", str(out), "--json", "--repeats", "1"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)["sparsity"]
    assert (res["method"], res["scope"], res["achieved"]) == ("sparsegpt", "owl", 0.6)  # 49152 of 81920
    back = prunekit.load(out)
    assert back.prunekit_meta["sparsify"]["method"] == "sparsegpt"
    zeros = sum(int((back[i].weight == 0).sum()) for i in (0, 2))
    assert zeros == round(0.6 * (64 * 256 + 256 * 256))


def test_cli_bad_sparsity_exits_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_sparsify, "resolve_model", lambda spec: _workload())
    assert main(["sparsify", "tiny", "--sparsity", "1.5", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert re.search("sparsity must be a number in", capsys.readouterr().err)
    assert main(["sparsify", "tiny", "--pattern", "1:3", "--out", str(tmp_path / "x.safetensors"),
                "--repeats", "1"]) == 2
    assert re.search("input dimension 64 .*not divisible by M=3", capsys.readouterr().err)


def test_cli_gradual_sparsity_prunes_while_the_zoo_model_trains(tmp_path, capsys):
    out = tmp_path / "g.safetensors"
    code = main(["sparsify", "fmnist-resnet", "--sparsity", "0.8", "--gradual-epochs", "0.01", "--limit", "64",
                 "--repeats", "1", "--json", "--out", str(out)])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    grad = res["sparsity"]["gradual"]
    assert grad["steps"] == 4 and grad["ramp_steps"] == 3 and grad["updates"] == 1
    assert abs(res["sparsity"]["achieved"] - 0.8) < 1e-3
    back = prunekit.load(out)
    assert back.prunekit_meta["sparsify"]["gradual"]["steps"] == 4 and back.prunekit_meta["zoo"] == "fmnist-resnet"
    assert prunekit.sparsity_report(back).total["sparsity"] > 0.7


def test_cli_gradual_refusals_name_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_sparsify, "resolve_model", lambda spec: _workload())
    assert main(["sparsify", "tiny", "--sparsity", "0.5", "--gradual-epochs", "1", "--out", str(tmp_path / "x")]) == 2
    assert re.search("training it needs data: give --data", capsys.readouterr().err)
    monkeypatch.setattr(cli_sparsify, "resolve_model", lambda spec: Workload(
        "fmnist-resnet", _workload().model, _workload().example_inputs, _workload().evaluate, "classification",
        "agree"))
    assert main(["sparsify", "fmnist-resnet", "--pattern", "2:4", "--gradual-epochs", "1", "--out",
                str(tmp_path / "x")]) == 2
    assert re.search("nothing to ramp", capsys.readouterr().err)
    assert main(["sparsify", "fmnist-resnet", "--sparsity", "0.5", "--gradual-epochs", "1", "--gradual-ramp", "0",
              "--out", str(tmp_path / "x")]) == 2
    assert re.search("--gradual-ramp must lie", capsys.readouterr().err)
