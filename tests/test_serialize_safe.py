"""Model files that never run code: the architecture is data, every kind of model round-trips exactly."""
import io
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

import prunekit
from prunekit.errors import PruningError
from prunekit.zoo import NAMES, load


def _same_outputs(a, b, inputs):
    args, kw = (inputs, {}) if isinstance(inputs, tuple) else ((), inputs)
    with torch.no_grad():
        x, y = a.eval()(*args, **kw), b.eval()(*args, **kw)
    x = getattr(x, "last_hidden_state", x)
    y = getattr(y, "last_hidden_state", y)
    assert torch.equal(x, y)


def _round_trip(model, tmp_path, name="m"):
    path = tmp_path / f"{name}.safetensors"
    prunekit.save(model, path)
    header = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["prunekit"])
    assert header["format"] == "prunekit/2" and "__skeleton__" not in header["tensors"]
    back = prunekit.load(path)
    sa, sb = model.state_dict(), back.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    return back


@pytest.mark.parametrize("name", NAMES)
def test_every_zoo_model_round_trips_exactly(name, tmp_path):
    from prunekit.zoo import entry, read_manifest
    if entry(name).builder is not None and name not in read_manifest():
        pytest.skip(f"no shipped checkpoint for {name} yet (prunekit zoo train {name})")
    wl = load(name)
    back = _round_trip(wl.model, tmp_path)
    _same_outputs(wl.model, back, wl.example_inputs)


@pytest.mark.parametrize("name,kw", [("resnet18", {}), ("vit_small_patch16_224", {"img_size": 32, "patch_size": 8}),
                                     ("convnext_atto", {})])
def test_pruned_timm_models_round_trip(name, kw, tmp_path):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=5, **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    prunekit.prune(m, (x,), ratio=0.4)
    back = _round_trip(m, tmp_path)
    _same_outputs(m, back, (x,))
    assert back.num_features == m.num_features


def test_bert_with_pruned_heads_round_trips(tmp_path):
    wl = load("minilm")
    prunekit.prune(wl.model, wl.example_inputs, ratio=0.5, units=("heads",))
    back = _round_trip(wl.model, tmp_path)
    assert back.config.num_attention_heads == wl.model.config.num_attention_heads
    _same_outputs(wl.model, back, wl.example_inputs)


def test_dynamic_vit_and_masked_models_round_trip(tmp_path):
    from prunekit.tokens import DynamicViT
    torch.manual_seed(0)
    dyn = DynamicViT(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3),
                     stages=(1,), keep=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    _same_outputs(dyn, _round_trip(dyn, tmp_path, "dyn"), (x,))
    net = load("fmnist-resnet").model
    prunekit.sparsify(net, 0.7)
    back = _round_trip(net, tmp_path, "masked")
    from prunekit.sparse.masking import is_masked, masked_modules
    name, ref = masked_modules(net)[0]
    mod = back.get_submodule(name)
    assert is_masked(mod) and torch.equal(mod.weight_mask, ref.weight_mask)
    with torch.no_grad():  # the mask hook is live again: an edited weight is re-masked on the next forward
        mod.weight.fill_(1.0)
    back(torch.randn(1, 1, 28, 28))
    assert int((mod.weight == 0).sum()) == int((~ref.weight_mask).sum())


def test_token_merged_model_round_trips(tmp_path):
    from prunekit.tokens import merge, schedule_of
    wl = load("fmnist-vit")
    merge(wl.model, r=4)
    back = _round_trip(wl.model, tmp_path)
    assert repr(schedule_of(back)) == repr(schedule_of(wl.model))
    _same_outputs(wl.model, back, wl.example_inputs)


class _Evil:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PK_MARKER'], 'w').write('ran')",))


def test_a_file_whose_pickle_runs_code_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("PK_MARKER", str(marker))
    buf = io.BytesIO()
    torch.save(_Evil(), buf)  # today's format stores its skeleton the same way
    header = {"format": "prunekit/1", "tensors": {}, "layout": []}
    path = tmp_path / "evil.safetensors"
    save_file({"__skeleton__": torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)}, str(path),
              metadata={"prunekit": json.dumps(header), "meta": "{}"})
    with pytest.raises(PruningError, match="old pickled format"):
        prunekit.load(path)
    assert not marker.exists()
    with pytest.warns(UserWarning, match="unpickling a prunekit/1 file"), pytest.raises(PruningError):
        prunekit.load(path, trust_pickle=True)  # the explicit opt-in does unpickle (this one yields no model)
    assert marker.exists()


def test_a_tree_naming_a_class_outside_the_allowed_libraries_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    prunekit.save(torch.nn.Linear(2, 2), path)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta, data = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta["prunekit"])
    header["tree"]["cls"] = "os:system"
    save_file(data, str(path), metadata={**meta, "prunekit": json.dumps(header)})
    with pytest.raises(PruningError, match="outside"):
        prunekit.load(path)
    header["tree"]["cls"] = "torch:load"  # allowed root, but not a module class
    save_file(data, str(path), metadata={**meta, "prunekit": json.dumps(header)})
    with pytest.raises(PruningError, match="not an nn.Module class"):
        prunekit.load(path)


def test_an_enum_from_an_imported_outside_library_loads_and_an_unimported_one_is_not_imported(tmp_path,
                                                                                              monkeypatch):
    # transformers >= 5.25 sets ``model._kernels_mode = kernels...Mode.INFERENCE``: data from a library outside
    # the allowed roots that an allowed one imports. Such an enum loads; the file cannot make us import anything.
    import enum
    import sys
    import types
    fake = types.ModuleType("pk_outside_lib")

    class Mode(enum.Enum):
        INFERENCE = 1
    Mode.__module__, Mode.__qualname__ = "pk_outside_lib", "Mode"
    fake.Mode = Mode
    monkeypatch.setitem(sys.modules, "pk_outside_lib", fake)
    net = torch.nn.Linear(2, 2)
    net.mode = Mode.INFERENCE
    path = tmp_path / "m.safetensors"
    prunekit.save(net, path)
    assert prunekit.load(path).mode is Mode.INFERENCE
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta, data = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta["prunekit"])
    for path_, error in (("pk_not_imported_lib:Mode", "outside"), ("pk_outside_lib:Mode.__class__", "not an enum")):
        header["tree"]["dict"]["mode"]["__enum__"] = path_
        save_file(data, str(path), metadata={**meta, "prunekit": json.dumps(header)})
        with pytest.raises(PruningError, match=error):
            prunekit.load(path)
        assert "pk_not_imported_lib" not in sys.modules
