import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

import prunekit
from prunekit.errors import PruningError
from prunekit.sparse import default_targets, is_masked, sparsity_report


def test_identity_at_zero_sparsity(cnn):
    x = torch.randn(2, 4, 8, 8)
    ref = cnn(x)
    res = prunekit.sparsify(cnn, 0.0)
    assert res.total == 0.0
    assert torch.allclose(cnn(x), ref, atol=1e-5, rtol=0)


def test_default_targets_skip_output_layer(cnn, mlp):
    assert [n for n, _ in default_targets(cnn)] == ["conv1", "conv2", "fc1"]
    assert [n for n, _ in default_targets(mlp)] == ["0", "2"]
    assert [n for n, _ in default_targets(cnn, ignore=["conv*"])] == ["fc1"]


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_achieved_sparsity(cnn, scope, sparsity):
    res = prunekit.sparsify(cnn, sparsity, scope=scope)
    targets = default_targets(cnn)
    numel = sum(m.weight.numel() for _, m in targets)
    zeros = sum(int((m.weight == 0).sum()) for _, m in targets)
    assert zeros == round(sparsity * numel) if scope == "global" else abs(zeros / numel - sparsity) < 2e-3
    assert res.total == pytest.approx(zeros / numel, abs=1e-6)
    if scope == "local":
        assert all(abs(s - sparsity) < 1e-2 for s in res.layers.values())
    assert cnn.head.weight.ne(0).all()
    assert sparsity_report(cnn).layers["conv1"]["sparsity"] == res.layers["conv1"]


def test_global_magnitude_matches_torch_prune(cnn):
    twin = type(cnn)()
    twin.load_state_dict(cnn.state_dict())
    prunekit.sparsify(cnn, 0.6, criterion="magnitude", scope="global")
    params = [(twin.conv1, "weight"), (twin.conv2, "weight"), (twin.fc1, "weight")]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=0.6)
    for name in ("conv1", "conv2", "fc1"):
        ours = getattr(cnn, name).weight_mask
        theirs = getattr(twin, name).weight_mask.bool()
        assert torch.equal(ours, theirs), name
        assert torch.equal(getattr(cnn, name).weight, getattr(twin, name).weight)


def test_global_magnitude_matches_torch_prune_with_ties():
    torch.manual_seed(1)
    lins = [nn.Linear(16, 16), nn.Linear(16, 8)]
    with torch.no_grad():  # many exact ties: values from a small set
        for lin in lins:
            lin.weight.copy_(torch.randint(-3, 4, lin.weight.shape).float())
    model = nn.Sequential(*lins, nn.Linear(8, 1))
    twin = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(8, 1))
    twin.load_state_dict(model.state_dict())
    prunekit.sparsify(model, 0.55)
    tprune.global_unstructured([(twin[0], "weight"), (twin[1], "weight")], tprune.L1Unstructured, amount=0.55)
    for i in (0, 1):
        assert torch.equal(model[i].weight_mask, twin[i].weight_mask.bool())


def test_wanda_scores_per_row_with_calib(mlp):
    calib = [torch.randn(16, 32) * torch.linspace(0.1, 3, 32) for _ in range(3)]
    w0 = mlp[0].weight.detach().clone()
    norm = torch.cat(calib).pow(2).sum(0).sqrt()
    res = prunekit.sparsify(mlp, 0.5, criterion="wanda", calib=calib)
    score = w0.abs() * norm
    kept = mlp[0].weight_mask
    for r in range(w0.shape[0]):  # per output row: exactly half pruned, the lowest scores
        assert int((~kept[r]).sum()) == 16
        assert score[r][~kept[r]].max() <= score[r][kept[r]].min()
    assert res.layers == {"0": 0.5, "2": 0.5}


def test_wanda_differs_from_magnitude_when_inputs_scaled(mlp):
    twin = nn.Sequential(*[type(m)(*([m.in_features, m.out_features] if isinstance(m, nn.Linear) else []))
                           for m in mlp])
    twin.load_state_dict(mlp.state_dict())
    calib = torch.randn(64, 32) * torch.logspace(-2, 1, 32)
    prunekit.sparsify(mlp, 0.5, criterion="wanda", calib=calib)
    prunekit.sparsify(twin, 0.5, criterion="magnitude", scope="local")
    assert not torch.equal(mlp[0].weight_mask, twin[0].weight_mask)


def test_wanda_on_conv_and_dict_calib(cnn):
    class Kw(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def get_classifier(self):
            return self.net.head

        def forward(self, pixels):
            return self.net(pixels)

    model = Kw(cnn)
    res = prunekit.sparsify(model, 0.5, criterion="wanda", calib=[{"pixels": torch.randn(2, 4, 8, 8)}])
    assert res.total == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("1:4", 1, 4), ("4:8", 4, 8)])
def test_nm_pattern_valid(mlp, pattern, n, m):
    res = prunekit.sparsify(mlp, None, pattern=pattern)
    assert res.total == pytest.approx(1 - n / m)
    for i in (0, 2):
        groups = mlp[i].weight.reshape(-1, m)
        assert int(groups.ne(0).sum(1).max()) <= n


def test_nm_on_conv_groups_along_gemm_rows(cnn):
    prunekit.sparsify(cnn, 0.5, pattern="2:4")  # conv1: 4*3*3 = 36 inputs per output
    for conv in (cnn.conv1, cnn.conv2):
        w = conv.weight.reshape(conv.out_channels, -1).reshape(-1, 4)
        assert int(w.ne(0).sum(1).max()) <= 2


def test_block_pattern(mlp):
    res = prunekit.sparsify(mlp, 0.5, pattern="block:8x8", scope="local")
    assert res.total == 0.5
    w = mlp[0].weight.reshape(8, 8, 4, 8).permute(0, 2, 1, 3)
    nz = w.ne(0).flatten(2)
    assert torch.all(nz.all(-1) | ~nz.any(-1))


def test_random_method_seeded(mlp):
    r1 = prunekit.sparsify(mlp, 0.7, criterion="random", seed=3)
    m1 = mlp[0].weight_mask.clone()
    prunekit.sparsify(mlp, 0.7, criterion="random", seed=3)
    assert torch.equal(m1, mlp[0].weight_mask) and r1.total == pytest.approx(0.7, abs=1e-3)


BAD = [
    (dict(sparsity=1.0), "sparsity must be"),
    (dict(sparsity=-0.1), "sparsity must be"),
    (dict(sparsity=0.5, method="l3"), "unknown method"),
    (dict(sparsity=0.5, pattern="3x3"), "unknown pattern"),
    (dict(sparsity=0.5, scope="model"), "unknown scope"),
    (dict(sparsity=0.5, method="wanda"), "needs calib"),
    (dict(sparsity=0.5, pattern="2:8"), "fixes the sparsity"),
    (dict(sparsity=0.5, pattern="block:5x5"), "does not tile"),
    (dict(sparsity=0.5, ignore=["nope"]), "no module or parameter of that name"),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_bad_input_raises_and_leaves_model_unchanged(cnn, unchanged, kwargs, message):
    prunekit.sparsify(cnn, 0.3, ignore=["conv1"])  # existing masks must survive a failed call too
    check = unchanged(cnn)
    with pytest.raises(PruningError, match=message):
        prunekit.sparsify(cnn, **kwargs)
    assert check()


def test_nm_indivisible_dimension_names_layer(cnn, unchanged):
    check = unchanged(cnn)
    with pytest.raises(PruningError, match="conv1: .*input dimension 36 .* not divisible by M=8"):
        prunekit.sparsify(cnn, 0.75, pattern="2:8")
    assert check()


def test_wanda_calib_failure_leaves_model_unchanged(cnn, unchanged):
    check = unchanged(cnn)
    with pytest.raises(RuntimeError):  # wrong input shape: the forward fails mid-calibration
        prunekit.sparsify(cnn, 0.5, criterion="wanda", calib=[torch.randn(2, 3, 8, 8)])
    assert check()
    with pytest.raises(PruningError, match="calib is empty"):
        prunekit.sparsify(cnn, 0.5, criterion="wanda", calib=[])
    assert check()


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_training_keeps_masked_weights_zero(cnn, opt):
    prunekit.sparsify(cnn, 0.8)
    mask = cnn.conv2.weight_mask.clone()
    params = list(cnn.parameters())
    optim = (torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1) if opt == "adamw"
             else torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2))
    cnn.train()
    for _ in range(5):
        optim.zero_grad()
        cnn(torch.randn(4, 4, 8, 8)).pow(2).mean().backward()
        optim.step()
        for _, m in default_targets(cnn):  # exactly zero right after the step, before any forward
            assert torch.all(m.weight[~m.weight_mask] == 0)
    assert torch.equal(cnn.conv2.weight_mask, mask)
    assert cnn.conv2.weight[mask].ne(0).float().mean() > 0.99  # the kept weights trained


def test_stale_optimizer_state_is_rezeroed_on_forward(mlp):
    optim = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9)
    mlp(torch.randn(4, 32)).sum().backward()
    optim.step()  # momentum buffers now nonzero everywhere
    prunekit.sparsify(mlp, 0.9)
    optim.zero_grad()
    mlp(torch.randn(4, 32)).sum().backward()
    optim.step()  # momentum moves masked weights ...
    mlp(torch.randn(1, 32))  # ... and the next forward puts them back to zero
    assert torch.all(mlp[0].weight[~mlp[0].weight_mask] == 0)


def test_mask_costs_one_bool_per_weight_and_no_weight_copy(cnn):
    n_before = {n: t.numel() for n, t in list(cnn.named_parameters()) + list(cnn.named_buffers())}
    prunekit.sparsify(cnn, 0.5)
    params = dict(cnn.named_parameters())
    buffers = dict(cnn.named_buffers())
    assert params.keys() == {k for k in n_before}  # no weight_orig
    extra = {k: v for k, v in buffers.items() if k not in n_before}
    assert set(extra) == {f"{n}.weight_mask" for n in ("conv1", "conv2", "fc1")}
    assert all(v.dtype == torch.bool and v.numel() == params[k.replace("_mask", "")].numel()
               for k, v in extra.items())
    assert "conv1.weight_mask" not in cnn.state_dict()  # a dense checkpoint still loads


def test_finalize_removes_masks_and_hooks(cnn):
    keys = set(cnn.state_dict())
    x = torch.randn(2, 4, 8, 8)
    prunekit.sparsify(cnn, 0.7)
    y = cnn(x)
    assert prunekit.finalize(cnn) == {}
    assert not any(is_masked(m) for m in cnn.modules())
    assert not any(len(m._forward_pre_hooks) for m in cnn.modules())
    assert set(cnn.state_dict()) == keys and not any("mask" in n for n, _ in cnn.named_buffers())
    assert all(p._backward_hooks is None or not p._backward_hooks for p in cnn.parameters())
    assert torch.equal(cnn(x), y)
    rep = sparsity_report(cnn)
    zeros = sum(rep.layers[n]["zeros"] for n in ("conv1", "conv2", "fc1"))
    assert zeros == sum(int((getattr(cnn, n).weight == 0).sum()) for n in ("conv1", "conv2", "fc1"))
    assert zeros / sum(rep.layers[n]["numel"] for n in ("conv1", "conv2", "fc1")) == pytest.approx(0.7, abs=1e-3)
    assert rep.layers["head"]["sparsity"] == 0.0 and 0 < rep.total["sparsity"] < 0.7


def test_timm_vit_sparsify_and_report():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8).eval()
    res = prunekit.sparsify(vit, 0.5, pattern="2:4")  # patch_embed: 3*8*8 = 192 inputs
    assert "head" not in res.layers and "blocks.0.attn.qkv" in res.layers
    assert res.total == 0.5
    rep = prunekit.sparsity_report(vit)
    assert rep.layers["blocks.0.mlp.fc1"]["sparsity"] == 0.5 and rep.layers["head"]["sparsity"] == 0.0
    assert "total (weight matrices)" in str(rep)
    assert vit(torch.randn(1, 3, 32, 32)).isfinite().all()
