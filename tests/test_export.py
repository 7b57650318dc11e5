"""ONNX export of pruned, sparsified, merged and DynamicViT models, each checked in onnxruntime."""
import json

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import prunekit
from prunekit.cli import main
from prunekit.errors import PruningError
from prunekit.export import check_onnx, export_onnx

ort = pytest.importorskip("onnxruntime")
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)


def test_pruned_zoo_cnn_exports_with_a_dynamic_batch(tmp_path, capsys):
    pruned = tmp_path / "r.safetensors"
    assert main(["prune", "fmnist-resnet", "--target-macs", "0.5", "--out", str(pruned), "--limit", "10",
                 "--repeats", "1"]) == 0
    capsys.readouterr()
    out = tmp_path / "r.onnx"
    assert main(["export", str(pruned), "--out", str(out), "--dynamic-batch", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["max_abs_diff"] <= doc["tolerance"] and doc["checked_batches"] == [8, 16]
    # free widths (22, 45, ...) miss onnxruntime's blocked convs: the exported graph is padded to 8
    assert doc["padded"]["padded_groups"] > 0 and "hints" not in doc
    import onnx
    convs = {n.input[1] for n in onnx.load(str(out)).graph.node if n.op_type == "Conv"}
    widths = [init.dims[0] for init in onnx.load(str(out)).graph.initializer if init.name in convs]
    assert widths and all(w % 8 == 0 for w in widths), widths
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 28, 28)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    ref = prunekit.load(pruned).eval()(x).detach().numpy()
    assert got.shape == (3, 10) and np.abs(got - ref).max() <= 1e-4 * (1 + np.abs(ref).max())
    assert main(["export", str(pruned), "--out", str(out), "--no-pad", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "padded" not in doc and "round_to=8" in doc["hints"][0]


def test_export_pads_a_copy_and_leaves_the_model_as_it_was(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.ReLU(),
                              torch.nn.Conv2d(5, 6, 3)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = export_onnx(net, (torch.randn(2, 3, 12, 12),), tmp_path / "p.onnx")
    assert res["padded"]["padded_groups"] == 1 and res["padded"]["channels_added"] == 3
    assert res["max_abs_diff"] <= res["tolerance"] and net[0].out_channels == 5
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    with pytest.raises(PruningError, match="pad_to must be at least 2"):
        export_onnx(net, (torch.randn(2, 3, 12, 12),), tmp_path / "p.onnx", pad_to=1)


def test_round_to_gives_the_widths_onnxruntime_blocks_on_and_silences_the_hint():
    from prunekit.export import layout_hints
    from prunekit.zoo import load
    wl = load("fmnist-resnet")
    prunekit.prune(wl.model, wl.example_inputs, target_macs=0.5, round_to=8)
    convs = [m for m in wl.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.out_channels % 8 == 0 for m in convs)
    assert layout_hints(wl.model) == []
    assert layout_hints(wl.model, block=16) != []  # some widths are 8 mod 16: the AVX-512 block is 16


def test_token_merged_vit_exports_with_its_fixed_token_counts(tmp_path):
    from prunekit.tokens import merge
    torch.manual_seed(0)
    vit = VisionTransformer(**TINY).eval()
    merge(vit, r=4)
    res = export_onnx(vit, (torch.randn(2, 3, 32, 32),), tmp_path / "tome.onnx")
    assert res["max_abs_diff"] <= res["tolerance"] and res["outputs"] == [[2, 3]]
    from prunekit.tokens import evit
    evit(vit, r=4)   # EViT: top-k gather plus the fused token
    res = export_onnx(vit, (torch.randn(2, 3, 32, 32),), tmp_path / "evit.onnx")
    assert res["max_abs_diff"] <= res["tolerance"] and res["outputs"] == [[2, 3]]


def test_dynamic_vit_and_a_finalized_sparse_model_export(tmp_path):
    from prunekit.tokens import DynamicViT
    torch.manual_seed(0)
    dyn = DynamicViT(VisionTransformer(**{**TINY, "depth": 3}), stages=(1,), keep=0.5).eval()
    res = export_onnx(dyn, (torch.randn(2, 3, 32, 32),), tmp_path / "dyn.onnx")
    assert res["max_abs_diff"] <= res["tolerance"]
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    prunekit.sparsify(net, 0.5, ignore=[])
    prunekit.finalize(net)
    res = export_onnx(net, (torch.randn(5, 16),), tmp_path / "sparse.onnx", check=True)
    assert res["max_abs_diff"] <= res["tolerance"]
    assert check_onnx(tmp_path / "sparse.onnx", net, (torch.randn(5, 16),))["max_abs_diff"] < 1e-5


class _DataDependent(torch.nn.Module):
    def forward(self, x):
        return x[: int(x.sum().item() > 0) + 1].numpy()


def test_what_cannot_be_exported_is_a_pruning_error_and_leaves_no_file(tmp_path):
    with pytest.raises(PruningError, match="_DataDependent: cannot export to ONNX"):
        export_onnx(_DataDependent(), (torch.randn(2, 3),), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(PruningError, match="ending in .onnx"):
        export_onnx(torch.nn.Linear(2, 2), (torch.randn(1, 2),), tmp_path / "x.pt")


def test_cli_refuses_a_bad_out_path_before_building_a_model(monkeypatch, capsys):
    def refuse(spec):
        raise AssertionError("a model was built")
    monkeypatch.setattr("prunekit.cli.export.resolve_model", refuse)
    assert main(["export", "fmnist-resnet", "--out", "model.pt"]) == 2
    assert "give a path ending in .onnx" in capsys.readouterr().err


def test_local_then_global_merging_exports_with_static_shapes(tmp_path):
    """merge_dense keeps its grouping as plain sizes and constant indices, so torch.export sees no
    data-dependent shape, and onnxruntime runs it (no boolean Where)."""
    from prunekit.tokens import merge_dense
    torch.manual_seed(0)
    vit = VisionTransformer(**{**TINY, "img_size": 32, "patch_size": 4}).eval()
    merge_dense(vit, windows=6, r=2)
    res = export_onnx(vit, (torch.randn(2, 3, 32, 32),), tmp_path / "dense.onnx")
    assert res["max_abs_diff"] <= res["tolerance"] and res["outputs"] == [[2, 3]]


def test_structurally_pruned_vit_exports(tmp_path):
    torch.manual_seed(0)
    vit = VisionTransformer(**{**TINY, "embed_dim": 64, "num_heads": 4}).eval()
    x = (torch.randn(2, 3, 32, 32),)
    res_prune = prunekit.prune(vit, x, target_macs=0.6)
    assert res_prune.macs_after < res_prune.macs_before
    res = export_onnx(vit, x, tmp_path / "vit.onnx", dynamic_batch=True)
    assert res["max_abs_diff"] <= res["tolerance"] and res["checked_batches"] == [2, 4]


def test_time_tube_merged_video_model_exports(tmp_path):
    from prunekit.tokens import merge_video
    from prunekit.zoo.models import build
    torch.manual_seed(0)
    vivit = build("motion-vivit").eval()
    merge_video(vivit, tubes=20, r=4)
    res = export_onnx(vivit, (torch.randn(2, 1, 8, 56, 56),), tmp_path / "video.onnx")
    assert res["max_abs_diff"] <= res["tolerance"] and res["outputs"] == [[2, 10]]


def test_pruned_hugging_face_encoder_exports_with_keyword_inputs(tmp_path, capsys):
    """MiniLM with a quarter of its heads pruned, through the CLI from a save_pretrained directory:
    the tokenizer's dict (input_ids, token_type_ids, attention_mask) becomes the graph's inputs."""
    from prunekit.zoo.minilm import model_path
    pruned = tmp_path / "minilm.safetensors"
    assert main(["--threads", "1", "prune", str(model_path()), "--ratio", "0.25", "--units", "heads", "--repeats",
                 "1", "--out", str(pruned)]) == 0
    capsys.readouterr()
    out = tmp_path / "minilm.onnx"
    assert main(["--threads", "1", "export", str(pruned), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["max_abs_diff"] <= doc["tolerance"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} == {"input_ids", "token_type_ids", "attention_mask"}
    heads = [m.num_attention_heads for m in prunekit.load(pruned).modules() if hasattr(m, "num_attention_heads")]
    assert heads and sum(heads) < 12 * len(heads)  # heads really went (MiniLM: 12 per layer)


def test_a_save_pretrained_directory_exports_as_it_is(tmp_path, capsys):
    from prunekit.zoo.minilm import model_path
    out = tmp_path / "dense.onnx"
    assert main(["--threads", "1", "export", str(model_path()), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["max_abs_diff"] <= doc["tolerance"] and out.stat().st_size > 1e6
