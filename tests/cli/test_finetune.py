"""``prunekit finetune`` and ``prune|sparsify --finetune-epochs --data`` on user data (tiny ImageFolders)."""
import json

import pytest
import torch
from PIL import Image

import prunekit
from prunekit.cli import main


def image_folder(root, per_class=24, classes=2, size=20):
    """Classes told apart by colour, so a few steps can learn them."""
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            base = torch.zeros(3, size, size)
            base[c % 3] = 0.8
            img = (base + 0.2 * torch.rand(3, size, size, generator=g)).clamp(0, 1)
            Image.fromarray((img.permute(1, 2, 0) * 255).to(torch.uint8).numpy()).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    return image_folder(root / "train"), image_folder(root / "val", per_class=8)


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_finetune_timm_model_on_an_image_folder(folders, tmp_path, capsys):
    train, val = folders
    out = tmp_path / "r18.safetensors"
    rc = main(["--threads", "1", "finetune", "timm:resnet18", "--data", f"imagefolder:{train}", "--val",
               f"imagefolder:{val}", "--epochs", "2", "--batch", "16", "--img-size", "16", "--out", str(out),
               "--json"])
    assert rc == 0
    doc = last_json(capsys)
    assert doc["steps"] == 2 * (48 // 16) and doc["epochs"] == 2.0 and doc["world_size"] == 1
    assert doc["seconds"] > 0 and 0 <= doc["top1"] <= 1 and doc["data"]["val"]["samples"] == 16
    assert doc["head"] == "replaced the head: 1000 -> 2 classes (timm reset_classifier)"
    from prunekit.cli.common import JSON_KEYS
    assert set(JSON_KEYS) <= set(doc) and doc["method"] == "finetune" and doc["metric"]["top1"] == doc["top1"]
    assert doc["dense"]["metric"]["top1"] == doc["top1_before"] and doc["speedup"] == 1.0
    back = prunekit.load(out)
    assert back.prunekit_meta["input_size"] == [3, 16, 16] and back.prunekit_meta["timm"] == "resnet18"
    assert back(torch.randn(1, 3, 16, 16)).shape == (1, 2)
    assert (tmp_path / "r18.safetensors.ckpt" / "latest").is_file()  # a checkpoint per epoch


def test_val_split_is_seeded_and_disjoint(folders, tmp_path, capsys):
    train, _ = folders
    for _ in range(2):
        assert main(["--threads", "1", "finetune", "timm:resnet18", "--data", f"imagefolder:{train}", "--val-split",
                     "0.25", "--epochs", "1", "--batch", "16", "--img-size", "16", "--json"]) == 0
    a, b = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:]]
    assert a["data"]["train"]["samples"] == 36 and a["data"]["val"]["samples"] == 12
    assert a["top1"] == b["top1"] and a["last_loss"] == b["last_loss"]  # same seed, same split, same run


def test_prune_any_model_then_recover_with_distillation(folders, tmp_path, capsys):
    train, val = folders
    dense = tmp_path / "dense.safetensors"
    assert main(["--threads", "1", "finetune", "timm:resnet18", "--data", f"imagefolder:{train}", "--epochs", "1",
                 "--batch", "16", "--img-size", "16", "--out", str(dense)]) == 0
    capsys.readouterr()
    out = tmp_path / "pruned.safetensors"
    assert main(["--threads", "1", "prune", str(dense), "--target-macs", "0.5", "--finetune-epochs", "1", "--data",
                 f"imagefolder:{train}", "--val", f"imagefolder:{val}", "--batch", "16", "--img-size", "16",
                 "--distill", "--out", str(out), "--json", "--repeats", "1"]) == 0
    doc = last_json(capsys)
    assert doc["ratios"]["macs"] <= 0.52 and doc["prune"]["finetune"]["steps"] == 3
    assert doc["prune"]["finetune"]["distilled"] is True and doc["metric"]["samples"] == 16
    back = prunekit.load(out)
    assert back.prunekit_meta["input_size"] == [3, 16, 16]
    assert back(torch.randn(2, 3, 16, 16)).shape == (2, 2)


def test_prune_refuses_distilling_from_an_untrained_head(folders, tmp_path, capsys):
    train, _ = folders
    rc = main(["prune", "timm:resnet18", "--ratio", "0.5", "--finetune-epochs", "1", "--data", f"imagefolder:{train}",
               "--distill", "--batch", "16", "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2 and "untrained head" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_sparsify_gradually_on_user_data(folders, tmp_path, capsys):
    train, _ = folders
    assert main(["--threads", "1", "sparsify", "timm:resnet18", "--sparsity", "0.8", "--gradual-epochs", "2",
                 "--gradual-ramp", "0.5", "--gradual-every", "1", "--data", f"imagefolder:{train}", "--batch", "16",
                 "--img-size", "16", "--out", str(tmp_path / "s.safetensors"), "--json", "--repeats", "1"]) == 0
    doc = last_json(capsys)
    assert doc["sparsity"]["achieved"] == pytest.approx(0.8, abs=1e-3)
    assert doc["sparsity"]["gradual"]["steps"] == 6 and doc["sparsity"]["gradual"]["updates"] >= 2


@pytest.mark.parametrize("case", ["missing", "empty", "epochs0", "resume", "val", "zoo"])
def test_bad_input_is_one_line_and_exit_2_before_any_model_is_built(case, folders, tmp_path, capsys, monkeypatch):
    import prunekit.cli.finetune as F

    def no_model(spec):
        raise AssertionError("a model was built before the input was checked")
    monkeypatch.setattr(F, "resolve_model", no_model)
    train, _ = folders
    (tmp_path / "empty" / "a").mkdir(parents=True)
    data = {"missing": f"imagefolder:{tmp_path / 'nope'}", "empty": f"imagefolder:{tmp_path / 'empty'}",
            "zoo": "minilm"}.get(case, f"imagefolder:{train}")
    argv = ["finetune", "timm:resnet18", "--data", data, "--epochs", "0" if case == "epochs0" else "1"]
    if case == "resume":
        argv += ["--resume", "--out", str(tmp_path / "never.safetensors")]
    if case == "val":
        argv += ["--val", "hf:" + str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prunekit finetune: ") and "Traceback" not in err[0]
    expect = {"missing": "not a directory", "empty": "no class folder", "epochs0": "positive number of epochs",
              "resume": "no checkpoint", "val": "not a Hugging Face datasets directory",
              "zoo": "a zoo name without training data"}[case]
    assert expect in err[0]


def test_teacher_whose_outputs_do_not_match_is_refused_before_training(folders, tmp_path, capsys):
    train, _ = folders
    out = tmp_path / "never.safetensors"
    rc = main(["finetune", "timm:resnet18", "--data", f"imagefolder:{train}", "--epochs", "1", "--img-size", "16",
               "--teacher", "timm:resnet18", "--batch", "16", "--out", str(out)])
    assert rc == 2 and "the teacher outputs (1, 1000) but the model (1, 2)" in capsys.readouterr().err
    assert not out.exists()


def test_resume_continues_a_run_to_the_same_weights(folders, tmp_path, capsys):
    """A run stopped after its first epoch and resumed ends where an uninterrupted one ends."""
    train, _ = folders
    base = ["--threads", "1", "finetune", "timm:resnet18", "--data", f"imagefolder:{train}", "--batch", "16",
            "--img-size", "16", "--json"]
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    assert main([*base, "--epochs", "2", "--out", str(full)]) == 0
    # the interrupted run: one epoch's checkpoint in the folder, as a kill after epoch 1 would leave it
    assert main([*base, "--epochs", "2", "--out", str(part), "--checkpoint-dir", str(tmp_path / "ck"),
                 "--seed", "0"]) == 0
    import shutil

    from prunekit.train.checkpoint import latest
    ck = tmp_path / "ck"
    last = latest(ck)
    shutil.rmtree(last)
    first = sorted(p for p in ck.glob("step-*"))[-1]
    (ck / "latest").write_text(first.name)
    assert main([*base, "--epochs", "2", "--out", str(part), "--checkpoint-dir", str(ck), "--resume"]) == 0
    doc = last_json(capsys)
    assert doc["resumed_from_step"] == int(first.name[5:]) == 3 and doc["steps"] == 6
    a, b = prunekit.load(full).state_dict(), prunekit.load(part).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
