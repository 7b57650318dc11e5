"""Data specs (imagefolder:, hf:), the seeded validation split and head replacement."""
import json

import pytest
import torch

import prunekit
from prunekit.cli import main
from prunekit.errors import PruningError
from prunekit.train.data import check_spec, hf_text, parse_spec, split
from prunekit.train.heads import match_head

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    words = {0: ["good", "great", "fine", "lovely"], 1: ["bad", "awful", "poor", "dreadful"]}
    rows = {"text": [f"a {words[i % 2][i % 4]} movie" for i in range(32)], "label": [i % 2 for i in range(32)]}
    path = tmp_path_factory.mktemp("hf") / "reviews"
    datasets.Dataset.from_dict(rows).save_to_disk(str(path))
    return path


def test_parse_and_check_specs(tmp_path, text_dir):
    assert parse_spec("imagefolder:/x") == ("imagefolder", "/x")
    assert parse_spec("fmnist-resnet") == ("name", "fmnist-resnet")
    assert check_spec(f"hf:{text_dir}") == ("hf", str(text_dir))
    with pytest.raises(PruningError, match="give a directory after 'hf:'"):
        parse_spec("hf:")
    with pytest.raises(PruningError, match="not a Hugging Face datasets directory"):
        check_spec(f"hf:{tmp_path}")


def test_split_is_a_seeded_partition():
    a = split(list(range(100)), 0.2, seed=3)
    b = split(list(range(100)), 0.2, seed=3)
    assert [list(p) for p in a] == [list(p) for p in b] and len(a[1]) == 20
    assert sorted([*a[0], *a[1]]) == list(range(100))
    assert list(split(list(range(100)), 0.2, seed=4)[1]) != list(a[1])
    with pytest.raises(PruningError, match="leave none to train on"):
        split([1, 2], 0.9)


def test_hf_text_tokenizes_and_checks_columns(text_dir, tmp_path):
    from prunekit.zoo.minilm import load_tokenizer
    ds = hf_text(str(text_dir), load_tokenizer(), max_length=8)
    item = ds[0]
    assert len(ds) == 32 and ds.classes == [0, 1] and item["input_ids"].shape == (8,) and int(item["labels"]) == 0
    datasets.Dataset.from_dict({"words": ["x"], "label": [0]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(PruningError, match="need a 'text'"):
        hf_text(str(tmp_path / "bad"), load_tokenizer())


def test_finetune_a_hugging_face_classifier_on_text(text_dir, tmp_path, capsys):
    out = tmp_path / "cls.safetensors"
    assert main(["--threads", "1", "finetune", "hf:minilm", "--data", f"hf:{text_dir}", "--val-split", "0.25",
                 "--epochs", "1", "--batch", "8", "--max-length", "8", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["steps"] == 24 // 8 and doc["data"]["val"]["samples"] == 8 and 0 <= doc["top1"] <= 1
    back = prunekit.load(out)
    assert back.config.num_labels == 2 and back.prunekit_meta["hf"]
    ids = {k: torch.ones(1, 4, dtype=torch.long) for k in ("input_ids", "attention_mask")}
    assert back(**ids).logits.shape == (1, 2)


def test_match_head_on_a_pruned_timm_model_and_a_hugging_face_classifier():
    import timm
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    m = timm.create_model("resnet18", pretrained=False).eval()
    prunekit.prune(m, (torch.randn(1, 3, 32, 32),), ratio=0.5)
    width = m.get_classifier().in_features
    assert width < 512 and match_head(m, 7) is not None
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7) and m.num_features == width
    bert = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=64, num_labels=2))
    assert match_head(bert, 5) == "replaced the head: 2 -> 5 classes (Hugging Face num_labels)"
    assert bert.config.num_labels == 5 and bert(input_ids=torch.ones(1, 3, dtype=torch.long)).logits.shape == (1, 5)
    with pytest.raises(PruningError, match="no nn.Linear classification head"):
        match_head(torch.nn.Conv2d(1, 1, 1), 3)
