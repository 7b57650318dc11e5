"""save_pretrained after pruning: plain from_pretrained rebuilds the model exactly, or saving is refused."""
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import prunekit
from prunekit.errors import PruningError
from prunekit.zoo import load


def _llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                      num_hidden_layers=2, vocab_size=96, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval(), {"input_ids": torch.randint(0, 96, (2, 12))}


def test_uniformly_pruned_llama_round_trips_through_plain_transformers(tmp_path):
    model, inputs = _llama()
    prunekit.prune(model, inputs, ratio=0.5, scope="local")
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 1)  # every layer agrees: the config says it
    assert cfg.intermediate_size == model.model.layers[0].mlp.up_proj.out_features < 128
    model.save_pretrained(tmp_path / "llama")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "llama").eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, back(**inputs).logits)


def test_dropped_blocks_round_trip_and_bert_heads_are_refused_with_the_fix(tmp_path):
    wl = load("minilm")
    prunekit.drop_layers(wl.model, n=2, calib=[wl.example_inputs])
    wl.model.save_pretrained(tmp_path / "short")
    back = AutoModel.from_pretrained(tmp_path / "short").eval()
    assert back.config.num_hidden_layers == 4
    with torch.no_grad():
        assert torch.equal(wl.model(**wl.example_inputs).last_hidden_state, back(**wl.example_inputs).last_hidden_state)
    # BERT's head width is hidden_size / num_attention_heads: removed heads cannot be written as a config
    prunekit.prune(wl.model, wl.example_inputs, ratio=0.5, units=("heads",))
    refused = r"query.weight: pruned \(\d+, 384\), the config builds \(384, 384\).*prunekit.save"
    with pytest.raises(PruningError, match=refused):
        wl.model.save_pretrained(tmp_path / "heads")
    assert not (tmp_path / "heads").exists()
    path = tmp_path / "heads.safetensors"  # the refusal survives prunekit's own file, which does round-trip
    prunekit.save(wl.model, path)
    back = prunekit.load(path)
    with pytest.raises(PruningError, match="save_pretrained"):
        back.save_pretrained(tmp_path / "heads")
    assert type(back).save_pretrained is type(wl.model).save_pretrained  # the class itself is untouched


def test_non_uniform_widths_are_refused(tmp_path):
    model, inputs = _llama()
    prunekit.prune(model, inputs, ratio=0.4, scope="global")
    widths = {layer.mlp.up_proj.out_features for layer in model.model.layers}
    heads = {layer.self_attn.q_proj.out_features for layer in model.model.layers}
    if len(widths) == 1 and len(heads) == 1:
        pytest.skip("global ranking happened to prune every layer alike")
    with pytest.raises(PruningError, match="prunekit.save"):
        model.save_pretrained(tmp_path / "x")
