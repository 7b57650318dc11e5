import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import prunekit
from prunekit.errors import PruningError


def _tensors(model):
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _assert_same(a, b):
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        x, y = ta[k], tb[k]
        if x.layout != torch.strided:
            assert x.layout == y.layout
            x, y = x.to_dense(), y.to_dense()
        assert x.dtype == y.dtype and torch.equal(x, y), k


def test_round_trip_changed_architecture(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                            num_classes=4).eval()
    # a structured-pruning-like edit: fewer heads and a narrower MLP in block 0
    attn = vit.blocks[0].attn
    attn.num_heads = 2
    attn.head_dim = 48
    attn.attn_dim = 96
    attn.qkv = nn.Linear(192, 3 * 96)
    attn.proj = nn.Linear(96, 192)
    mlp = vit.blocks[0].mlp
    mlp.fc1, mlp.fc2 = nn.Linear(192, 100), nn.Linear(100, 192)
    x = torch.randn(2, 3, 32, 32)
    ref = vit(x)
    path = tmp_path / "vit.safetensors"
    prunekit.save(vit, path, meta={"zoo": "fmnist-vit", "steps": [1, 2]})
    back = prunekit.load(path)
    assert back.blocks[0].attn.num_heads == 2 and back.blocks[0].mlp.fc1.out_features == 100
    assert back.prunekit_meta == {"zoo": "fmnist-vit", "steps": [1, 2]}
    _assert_same(vit, back)
    assert torch.equal(back(x), ref)
    assert all(p.device.type == "cpu" for p in vit.parameters())  # saving left the model intact


def test_sparse_file_is_small_and_exact(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    dense_path = tmp_path / "dense.safetensors"
    prunekit.save(model, dense_path)
    res = prunekit.sparsify(model, 0.9)
    assert res.total == pytest.approx(0.9, abs=1e-4)
    prunekit.finalize(model)
    sparse_path = tmp_path / "sparse.safetensors"
    prunekit.save(model, sparse_path)
    ratio = sparse_path.stat().st_size / dense_path.stat().st_size
    assert ratio <= 0.20, ratio
    # also against a plain safetensors state dict of the dense model
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))
    assert sparse_path.stat().st_size <= 0.2 * dense_path.stat().st_size
    _assert_same(model, prunekit.load(sparse_path))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_round_trip(tmp_path, dtype):
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2)).to(dtype)
    prunekit.sparsify(model, 0.6)
    prunekit.finalize(model)
    prunekit.save(model, tmp_path / "m.safetensors")
    _assert_same(model, prunekit.load(tmp_path / "m.safetensors"))


def test_masked_model_round_trip_keeps_masks(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 2))
    prunekit.sparsify(model, 0.75)
    prunekit.save(model, tmp_path / "m.safetensors")
    back = prunekit.load(tmp_path / "m.safetensors")
    assert torch.equal(back[0].weight_mask, model[0].weight_mask)
    opt = torch.optim.AdamW(back.parameters(), lr=0.1, weight_decay=0.1)
    back(torch.randn(4, 32)).sum().backward()  # the first forward re-registers the gradient hook
    opt.step()
    assert torch.all(back[0].weight[~back[0].weight_mask] == 0)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.out = nn.Linear(16, 50, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(self.emb(ids))


def test_tied_weights_stay_tied(tmp_path):
    model = Tied()
    prunekit.save(model, tmp_path / "t.safetensors")
    with pytest.raises(PruningError, match="outside .* to prunekit.load"):
        prunekit.load(tmp_path / "t.safetensors")  # a user class is only built when the caller names it
    back = prunekit.load(tmp_path / "t.safetensors", classes=[Tied])
    assert back.out.weight is back.emb.weight
    assert torch.equal(back.emb.weight, model.emb.weight)


def test_sparse_kernel_layers_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 2)).eval()
    prunekit.sparsify(model, 0.9, pattern="block:16x16", scope="local", ignore=["1"])
    prunekit.finalize(model)
    prunekit.finalize(model, kernels="bsr")
    x = torch.randn(3, 64)
    prunekit.save(model, tmp_path / "k.safetensors")
    back = prunekit.load(tmp_path / "k.safetensors")
    assert back[0].weight.layout == torch.sparse_bsr
    assert torch.equal(back(x), model(x))


def test_bad_files(tmp_path):
    with pytest.raises(PruningError, match="missing.safetensors.*no such file"):
        prunekit.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(PruningError, match="junk.safetensors.*not a safetensors file"):
        prunekit.load(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(PruningError, match="plain.safetensors.*without a prunekit header"):
        prunekit.load(plain)
    with pytest.raises(PruningError, match="meta is not JSON"):
        prunekit.save(nn.Linear(2, 2), tmp_path / "x.safetensors", meta={"t": torch.zeros(1)})


def test_unpicklable_module_error_leaves_model_intact(tmp_path):
    model = nn.Linear(4, 4)
    model.register_forward_hook(lambda m, a, o: o)  # a lambda cannot be pickled
    w = model.weight
    with pytest.raises(PruningError, match="a forward hook .* cannot be stored as data"):
        prunekit.save(model, tmp_path / "x.safetensors")
    assert model.weight is w and model.weight.device.type == "cpu"


def test_meta_survives_resave(tmp_path):
    prunekit.save(nn.Linear(3, 3), tmp_path / "a.safetensors", meta={"zoo": "fmnist-vit"})
    back = prunekit.load(tmp_path / "a.safetensors")
    prunekit.save(back, tmp_path / "b.safetensors")
    assert prunekit.load(tmp_path / "b.safetensors").prunekit_meta == {"zoo": "fmnist-vit"}


def test_deepcopy_of_masked_model_keeps_zeros():
    import copy
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 2))
    prunekit.sparsify(model, 0.5)
    twin = copy.deepcopy(model)
    opt = torch.optim.Adam(twin.parameters(), lr=0.1)
    twin(torch.randn(2, 16)).sum().backward()
    opt.step()
    assert torch.all(twin[0].weight[~twin[0].weight_mask] == 0)
