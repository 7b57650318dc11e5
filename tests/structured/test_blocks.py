"""drop_layers: block influence numbers, which block goes, attribute fix-ups, transactional errors."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.structured.blocks import DropResult, block_influence, drop_layers, find_blocks

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")


class Residual(nn.Module):
    """x + scale * f(x): scale 0 makes an exact identity block."""

    def __init__(self, dim: int, scale: float):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.fc(x)


class TinyViT(nn.Module):
    """Three residual blocks in ``blocks`` (nn.Sequential), like timm's VisionTransformer."""

    def __init__(self, scales=(1.0, 0.0, 0.3), dim: int = 8):
        super().__init__()
        self.blocks = nn.Sequential(*[Residual(dim, s) for s in scales])
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean(1))


def snapshot(model: nn.Module) -> tuple[str, dict]:
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, snap: tuple[str, dict]) -> None:
    text, state = snap
    assert repr(model) == text
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k


def bert(layers: int = 4) -> nn.Module:
    cfg = transformers.BertConfig(num_hidden_layers=layers, hidden_size=32, intermediate_size=64,
                                  num_attention_heads=4, vocab_size=100, max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


def gpt2(layers: int = 4) -> nn.Module:
    cfg = transformers.GPT2Config(n_layer=layers, n_embd=32, n_head=4, vocab_size=100, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama(layers: int = 4) -> nn.Module:
    cfg = transformers.LlamaConfig(num_hidden_layers=layers, hidden_size=32, intermediate_size=64,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                   max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(1, 100, (2, 9))


# ---- block influence numbers ------------------------------------------------------------------


def test_identity_block_has_zero_influence_and_is_removed_first():
    torch.manual_seed(0)
    model = TinyViT().eval()
    x = torch.randn(4, 5, 8)
    bi = block_influence(model, [x])
    assert abs(bi["blocks.1"]) < 1e-6
    assert bi["blocks.0"] > 1e-3 and bi["blocks.2"] > 1e-3
    ref = model(x)
    res = drop_layers(model, n=1, calib=[x])
    assert res.removed_paths == ["blocks.1"] and res.removed == [1]
    assert res.scores[1] == pytest.approx(0.0, abs=1e-6)
    assert len(model.blocks) == 2 and isinstance(model.blocks, nn.Sequential)
    torch.testing.assert_close(model(x), ref, atol=1e-6, rtol=0)   # removing an identity changes nothing


def test_influence_matches_hand_computed_cosine():
    torch.manual_seed(0)
    model = TinyViT(scales=(0.5,)).eval()
    x = torch.randn(3, 4, 8)
    with torch.no_grad():
        y = model.blocks[0](x)
    expected = 1 - nn.functional.cosine_similarity(x, y, dim=-1).mean()
    assert block_influence(model, [x])["blocks.0"] == pytest.approx(float(expected), abs=1e-6)


def test_lowest_influence_block_is_removed(ids):
    model = bert(4)
    calib = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    res = drop_layers(model, n=1, calib=calib)
    assert res.removed == [min(range(4), key=lambda i: res.scores[i])]
    assert all(s >= 0 for s in res.scores)


def test_attention_mask_excludes_padding(ids):
    model = TinyViT(scales=(0.5, 0.5, 0.5)).eval()
    x = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = model.blocks

        def forward(self, x, attention_mask):
            return self.blocks(x)

    masked = block_influence(Wrap(), [{"x": x, "attention_mask": mask}], blocks=["blocks.0"])["blocks.0"]
    with torch.no_grad():
        y = model.blocks[0](x)
    cos = nn.functional.cosine_similarity(x, y, dim=-1)
    assert masked == pytest.approx(float(1 - cos[mask.bool()].mean()), abs=1e-6)


# ---- removal and fix-ups ----------------------------------------------------------------------


def test_n_zero_is_a_no_op(ids):
    model = bert(3)
    ref = model(input_ids=ids).last_hidden_state
    res = drop_layers(model, n=0, calib=[(ids,)])
    assert res.removed == [] and len(model.encoder.layer) == 3
    assert res.params_after == res.params_before
    torch.testing.assert_close(model(input_ids=ids).last_hidden_state, ref, atol=1e-5, rtol=0)


def test_bert_layers_and_config(ids):
    model = bert(4)
    before = sum(p.numel() for p in model.parameters())
    res = drop_layers(model, n=2, calib=[{"input_ids": ids}])
    assert isinstance(res, DropResult) and res.family == "hf-transformers"
    assert len(model.encoder.layer) == 2 and isinstance(model.encoder.layer, nn.ModuleList)
    assert model.config.num_hidden_layers == 2
    assert res.params_before == before and res.params_after == sum(p.numel() for p in model.parameters())
    assert res.params_after < before
    assert model(input_ids=ids).last_hidden_state.shape == (2, 9, 32)


def test_gpt2_n_layer_and_layer_idx(ids):
    model = gpt2(4)
    drop_layers(model, ratio=0.5, calib=[(ids,)])
    assert model.config.n_layer == 2 and model.config.num_hidden_layers == 2
    assert [blk.attn.layer_idx for blk in model.transformer.h] == [0, 1]
    assert model(ids).logits.shape == (2, 9, 100)
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 12)


def test_llama_kv_cache_matches_full_forward(ids):
    model = llama(4)
    res = drop_layers(model, n=2, criterion="last")
    assert res.removed_paths == ["model.layers.2", "model.layers.3"]
    res = drop_layers(llama(4), n=1, calib=[ids])    # block influence path runs on Llama too
    assert len(res.removed) == 1
    model = llama(4)
    res = drop_layers(model, n=2, criterion=lambda m, paths: [0.0, 1.0, 0.5, 2.0])  # layers 0 and 2 go
    assert res.removed_paths == ["model.layers.0", "model.layers.2"]
    assert model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]   # were 1 and 3
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        prefix = model(ids[:, :-1], use_cache=True)
        cache = getattr(prefix, "cache", None) or prefix.past_key_values
        step = model(ids[:, -1:], cache=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)


def test_timm_vit_blocks_and_feature_info():
    model = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, patch_size=8).eval()
    x = torch.randn(2, 3, 32, 32)
    res = drop_layers(model, n=4, calib=[x])
    assert len(model.blocks) == 8 and isinstance(model.blocks, nn.Sequential)
    assert len(model.feature_info) == 8 and model.feature_info[-1]["module"] == "blocks.7"
    assert model(x).shape == (2, 5)
    assert sorted(res.scores)[:4] == sorted(res.scores[i] for i in res.removed)


def test_zoo_segvit_encoder_blocks():
    from prunekit.zoo.models import build
    model = build("mosaic-segvit").eval()
    x = torch.randn(1, 1, 56, 56)
    res = drop_layers(model, n=2, criterion="last")
    assert res.removed_paths == ["encoder.blocks.6", "encoder.blocks.7"]
    assert len(model.encoder.blocks) == 6 and model(x).shape == (1, 11, 56, 56)


def test_torch_transformer_encoder_num_layers():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 16)
    drop_layers(model, n=3, calib=[x])
    assert len(model.layers) == 1 and model.num_layers == 1
    assert model(x).shape == (2, 5, 16)


def test_resnet_never_drops_downsampling_blocks():
    from prunekit.zoo.models import build
    model = build("fmnist-resnet").eval()
    x = torch.randn(2, 1, 28, 28)
    res = drop_layers(model, n=4, calib=[x])
    # layers.2 and layers.4 change shape (stride 2, wider): never candidates
    assert set(res.removed) == {0, 1, 3, 5}
    assert len(model.layers) == 2 and model(x).shape == (2, 10)
    with pytest.raises(PruningError, match="n <= 4"):
        drop_layers(build("fmnist-resnet").eval(), n=5, calib=[x])


def test_torchvision_resnet_last_needs_example_inputs():
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(PruningError, match="example_inputs"):
        drop_layers(model, n=1, criterion="last")
    res = drop_layers(model, n=2, criterion="last", example_inputs=(x,))
    assert res.removed_paths == ["layer3.1", "layer4.1"]
    assert len(model.layer4) == 1 and model(x).shape == (1, 4)


def test_callable_importance():
    model = TinyViT(scales=(1.0, 1.0, 1.0)).eval()
    res = drop_layers(model, n=1, criterion=lambda m, paths: [3.0, 1.0, 2.0])
    assert res.removed_paths == ["blocks.1"] and res.importance == "<lambda>"


def test_result_round_trips_torch_save(ids, tmp_path):
    model = gpt2(3)
    drop_layers(model, n=1, calib=[(ids,)])
    path = tmp_path / "m.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False).eval()
    assert len(loaded.transformer.h) == 2 and loaded.config.n_layer == 2
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = gpt2(2)
    fresh.load_state_dict(torch.load(buf))        # same keys as a model built with 2 layers
    torch.testing.assert_close(fresh(ids).logits, model(ids).logits)


def test_prunekit_save_round_trip(tmp_path):
    serialize = pytest.importorskip("prunekit.serialize")
    model = TinyViT().eval()
    x = torch.randn(2, 5, 8)
    drop_layers(model, n=1, calib=[x])
    serialize.save(model, tmp_path / "m.pk")
    loaded = serialize.load(tmp_path / "m.pk", classes=[TinyViT])
    assert len(loaded.blocks) == 2
    torch.testing.assert_close(loaded(x), model(x))


# ---- errors leave the model as it was ---------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=1, ratio=0.5), "exactly one of n"),
    (dict(), "exactly one of n"),
    (dict(n=4), "remove all 4 blocks"),
    (dict(n=-1), "non-negative"),
    (dict(ratio=1.0), "fraction"),
    (dict(n=1, calib=None), "needs calib"),
    (dict(n=1, criterion="bogus"), "unknown importance"),
    (dict(n=1, criterion=lambda m, p: [0.0]), "returned 1 scores for 4 blocks"),
    (dict(n=1, calib=[]), "calib is empty"),
    (dict(n=1, calib=[("not a tensor",)]), "failed on a calibration batch"),
])
def test_bad_input_raises_and_leaves_model_unchanged(kwargs, match, ids):
    model = bert(4)
    snap = snapshot(model)
    cfg = copy.deepcopy(model.config.to_dict())
    kwargs.setdefault("calib", [(ids,)])
    with pytest.raises(PruningError, match=match) as err:
        drop_layers(model, **kwargs)
    assert err.value.operation == "drop layers" and "encoder.layer" in err.value.module
    assert_unchanged(model, snap)
    assert model.config.to_dict() == cfg


def test_no_block_container():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    snap = snapshot(model)
    with pytest.raises(PruningError, match="no block container found"):
        drop_layers(model, n=1, criterion="last")
    assert_unchanged(model, snap)


def test_failed_fixup_restores_model(monkeypatch, ids):
    from prunekit.structured import blocks as mod
    model = gpt2(4)
    snap = snapshot(model)
    real = mod._hf_transformers

    def broken(m):
        site = real(m)
        inner = site.fixup

        def fixup(model, kept, undo):
            inner(model, kept, undo)
            raise RuntimeError("boom")
        site.fixup = fixup
        return site
    monkeypatch.setattr(mod, "ADAPTERS", [broken])
    with pytest.raises(PruningError, match="boom"):
        drop_layers(model, n=1, criterion="last")
    assert_unchanged(model, snap)
    assert len(model.transformer.h) == 4


def test_find_blocks_families():
    assert find_blocks(bert(2)).containers == ["encoder.layer"]
    assert find_blocks(gpt2(2)).containers == ["transformer.h"]
    assert find_blocks(llama(2)).containers == ["model.layers"]
    assert find_blocks(TinyViT()).containers == ["blocks"]


def test_public_verb():
    import prunekit
    assert prunekit.drop_layers is drop_layers
