import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.cli import main
from prunekit.zoo import read_manifest


def test_console_script_help():
    exe = Path(sys.executable).parent / "prunekit"  # installed by pip install -e .
    assert exe.is_file()
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "profile" in out and "demo" in out and "zoo" in out


def test_profile_json_has_the_shared_shape(capsys):
    name = "fmnist-vit" if "fmnist-vit" in read_manifest() else "fmnist-resnet"
    if name not in read_manifest():
        pytest.skip("no zoo checkpoint shipped yet")
    assert main(["profile", name, "--json", "--limit", "100", "--repeats", "2"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("params", "macs", "latency_ms", "batch_size", "threads", "metric"):
        assert key in doc
    assert doc["macs"] > 0 and doc["batch_size"] == 8 and 0 <= doc["metric"]["top1"] <= 1


def test_zoo_list_and_quick_train(tmp_path, capsys):
    assert main(["zoo", "list"]) == 0
    assert "minilm" in capsys.readouterr().out
    assert main(["zoo", "train", "fmnist-resnet", "--quick", "--out-dir", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (tmp_path / "fmnist-resnet.safetensors").is_file()
    assert manifest["fmnist-resnet"]["command"] == "prunekit zoo train fmnist-resnet"


def test_demo_writes_report(tmp_path):
    from prunekit.demo import run_demo
    if "fmnist-resnet" not in read_manifest():
        pytest.skip("no fmnist-resnet checkpoint shipped yet")
    step = "structured: 50% MACs (l2, one-shot)"
    rows, report = run_demo(models=("fmnist-resnet",), methods=(step,), limit=64, out_root=tmp_path)
    for name in ("tradeoff.png", "report.html", "layers-1.png"):
        assert (report.parent / name).stat().st_size > 1000, name
    dense, pruned = rows
    assert dense["method"] == "dense" and dense["macs"] > 0 and dense["speedup"] == 1.0
    assert pruned["method"] == step and pruned["family"] == "structured"
    # the latency pair and its speed-up are one measurement; so are the throughput pair and theirs
    assert pruned["speedup"] == pytest.approx(pruned["dense_latency_ms"] / pruned["latency_ms"], abs=2e-3)
    assert pruned["throughput_speedup"] == pytest.approx(pruned["throughput"] / pruned["dense_throughput"], rel=2e-3)
    assert pruned["batch_size"] == 8 and pruned["throughput_batch"] == 32
    assert any(la["out"] < la["dense_out"] for la in pruned["layers"])
    text = report.read_text()
    assert "| fmnist-resnet | dense |" in text and "images/s (batch 32)" in text


def test_zoo_train_more_epochs_continues_the_shipped_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from prunekit.zoo.store import load_state
    if "fmnist-vit" not in read_manifest():
        pytest.skip("no fmnist-vit checkpoint shipped yet")
    old = read_manifest()["fmnist-vit"]
    assert main(["zoo", "train", "fmnist-vit", "--quick", "--more-epochs", "0.05", "--out-dir", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "manifest.json").read_text())["fmnist-vit"]
    assert entry["route"].startswith(old["route"]) and old["sha256"][:12] in entry["route"]
    assert entry["command"].endswith("prunekit zoo train fmnist-vit --more-epochs 0.05")
    assert entry["train_minutes"] >= old["train_minutes"]
    new, shipped = load_file(str(tmp_path / "fmnist-vit.safetensors")), load_state("fmnist-vit")
    # one warm-up step moves the weights only a little from the shipped ones (not a fresh init)
    drift = (new["pos_embed"] - shipped["pos_embed"]).abs().max().item()
    assert drift < 0.05 * shipped["pos_embed"].abs().max().item()


def test_zoo_train_continuation_flags_need_more_epochs(capsys):
    assert main(["zoo", "train", "motion-vivit", "--device", "cuda"]) == 2
    assert "add --more-epochs" in capsys.readouterr().err


def test_zoo_train_continuation_refuses_bad_settings_with_the_flag_named(capsys, tmp_path):
    assert main(["zoo", "train", "motion-vivit", "--more-epochs", "1", "--lr", "-1"]) == 2
    assert "--lr must be positive" in capsys.readouterr().err
    args = ["zoo", "train", "mosaic-segvit", "--quick", "--more-epochs", "1", "--batch", "1024",
            "--out-dir", str(tmp_path)]
    assert main(args) == 2  # quick: 512 mosaics
    assert "cannot fill one batch of 1024" in capsys.readouterr().err and not (tmp_path / "manifest.json").exists()


def test_zoo_train_records_the_segmentation_continuation_flags(tmp_path, capsys):
    args = ["zoo", "train", "mosaic-segvit", "--quick", "--more-epochs", "0.05", "--sample-offset", "96000",
            "--decoder-only", "--out-dir", str(tmp_path)]
    assert main(args) == 0
    entry = json.loads((tmp_path / "manifest.json").read_text())["mosaic-segvit"]
    assert entry["command"].endswith("prunekit zoo train mosaic-segvit --more-epochs 0.05 --sample-offset 96000 "
                                     "--decoder-only")
    assert "numbered 96000-96511" in entry["route"] and "(encoder frozen)" in entry["route"]
    refused = [(["--decoder-only"], "add --more-epochs"), (["--stream"], "add --more-epochs"),
               (["--more-epochs", "1", "--sample-offset", "0"], "--sample-offset must be positive"),
               (["--more-epochs", "1", "--stream", "--sample-offset", "5"], "give one of them")]
    for flags, message in refused:
        out = tmp_path / "refused"
        assert main(["zoo", "train", "mosaic-segvit", "--quick", "--out-dir", str(out), *flags]) == 2
        assert message in capsys.readouterr().err and not out.exists()
