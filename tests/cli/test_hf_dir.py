"""Every verb takes a plain save_pretrained directory (a folder holding config.json), as it takes hf:DIR."""
import json

import pytest

import prunekit
from prunekit.cli import main
from prunekit.zoo.minilm import model_path


@pytest.mark.parametrize("verb, args", [("profile", []), ("prune", ["--ratio", "0.3", "--units", "heads"]),
                                        ("sparsify", ["--sparsity", "0.5"]), ("merge", ["--r", "2"])])
def test_a_plain_hugging_face_directory_is_a_model(verb, args, tmp_path, capsys):
    out = ["--out", str(tmp_path / "m.safetensors")] if verb in ("prune", "sparsify") else []
    assert main(["--threads", "1", verb, str(model_path()), *args, "--repeats", "1", *out, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["params"] > 0 and doc["macs"] > 0
    if out:
        back = prunekit.load(out[1])
        assert back.prunekit_meta["hf"]  # the file remembers its tokenizer's directory
