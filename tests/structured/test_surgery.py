"""Attribute fix-ups after surgery for modules whose forward reads a width from an attribute."""
import pytest
import torch
from timm.models.metaformer import MetaFormer, Pooling

import prunekit


def test_metaformer_scale_shape_follows_its_pruned_parameter():
    # poolformerv2-style MetaFormer: every residual branch is scaled by timm's Scale, x * scale.view(shape)
    torch.manual_seed(0)
    model = MetaFormer(depths=(1, 1, 1, 1), dims=(16, 24, 32, 48), token_mixers=Pooling,
                       layer_scale_init_values=1e-5, res_scale_init_values=1.0, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    res = prunekit.prune(model, (x,), ratio=0.3)
    assert model(x).shape == (2, 10)
    assert res.macs_after <= 0.8 * res.macs_before
    scales = [m for m in model.modules() if type(m).__name__ == "Scale"]
    assert scales and all(m.shape[0] == m.scale.shape[0] for m in scales)
    assert any(m.scale.shape[0] < 48 for m in scales)


def test_csp_stage_split_width_follows_the_pruned_expansion():
    # CrossStage3 splits conv_exp's output with x.split(self.expand_chs // 2): a literal width
    import timm
    torch.manual_seed(0)
    model = timm.create_model("cs3darknet_focus_s", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    before = [m.expand_chs for m in model.modules() if type(m).__name__ == "CrossStage3"]
    res = prunekit.prune(model, (x,), ratio=0.3)
    assert model(x).shape == (1, 10)
    assert res.macs_after <= 0.8 * res.macs_before
    stages = [m for m in model.modules() if type(m).__name__ == "CrossStage3"]
    assert stages and all(m.expand_chs == m.conv_exp.conv.out_channels for m in stages)
    assert any(m.expand_chs < b for m, b in zip(stages, before, strict=True))


def test_res2net_split_width_follows_the_pruned_pieces():
    # Bottle2neck splits conv1's output with torch.split(out, self.width, 1): equal pieces of a literal width
    from timm.models.res2net import Bottle2neck
    from timm.models.resnet import ResNet
    torch.manual_seed(0)
    model = ResNet(block=Bottle2neck, layers=[1, 1, 1, 1], base_width=26, block_args=dict(scale=4),
                   num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    before = [m.width for m in model.modules() if isinstance(m, Bottle2neck)]
    res = prunekit.prune(model, (x,), ratio=0.3)
    assert model(x).shape == (1, 10)
    assert res.macs_after <= 0.6 * res.macs_before
    blocks = [m for m in model.modules() if isinstance(m, Bottle2neck)]
    assert all(m.width * m.scale == m.conv1.out_channels for m in blocks)
    assert all(m.conv3.in_channels == m.width + sum(c.out_channels for c in m.convs) for m in blocks)
    assert all(m.width < b for m, b in zip(blocks, before, strict=True))


def test_selective_kernel_split_follows_its_pruned_paths():
    # SKNet: torch.split(x, self.in_channels // self.num_paths, 1) feeds one piece to each path
    import timm
    torch.manual_seed(0)
    model = timm.create_model("skresnet18", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    res = prunekit.prune(model, (x,), ratio=0.3)
    assert model(x).shape == (1, 10)
    assert res.macs_after <= 0.6 * res.macs_before
    sks = [m for m in model.modules() if type(m).__name__ == "SelectiveKernel"]
    assert sks and all(m.in_channels == m.num_paths * m.paths[0].conv.in_channels for m in sks)


def test_split_attention_keeps_its_radix():
    # ResNeSt: reshape(B, self.radix, RC // self.radix, H, W): the radix is a literal of the forward, so the
    # grouped conv keeps both radix groups (pruning one would leave RC // radix wrong)
    import timm
    torch.manual_seed(0)
    model = timm.create_model("resnest14d", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    res = prunekit.prune(model, (x,), ratio=0.3)
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref.shape and res.macs_after < 0.9 * res.macs_before
    attns = [m for m in model.modules() if type(m).__name__ == "SplitAttn"]
    assert attns and all(m.conv.groups == m.radix and m.fc1.in_channels == m.conv.out_channels // m.radix
                         for m in attns)


def test_bottleneck_and_halo_attention_head_widths_follow_their_projections():
    # BoTNet / HaloNet: split and reshape by dim_out_qk, dim_head_qk, dim_head_v; heads are literal
    from timm.layers.bottleneck_attn import BottleneckAttn
    from timm.layers.halo_attn import HaloAttn
    from torch import nn
    torch.manual_seed(0)
    for attn in (BottleneckAttn(32, 32, feat_size=8, num_heads=4), HaloAttn(32, 32, feat_size=8, num_heads=4,
                                                                          block_size=4, halo_size=1)):
        model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), attn, nn.Conv2d(32, 10, 1)).eval()
        x = torch.randn(2, 3, 8, 8)
        res = prunekit.prune(model, (x,), ratio=0.3)
        assert model(x).shape == (2, 10, 8, 8)
        assert res.macs_after < (0.8 if isinstance(attn, BottleneckAttn) else 0.9) * res.macs_before
        assert attn.num_heads == 4 and attn.dim_head_qk == attn.pos_embed.height_rel.shape[-1]
        assert attn.dim_out_v == attn.num_heads * attn.dim_head_v
        if isinstance(attn, BottleneckAttn):  # HaloAttn's kv split by head keeps its widths whole
            assert attn.dim_head_qk < 8


def test_efficientvim_mixer_split_widths_follow_its_pruned_projections():
    # HSMSSD: split(BCdt, [state_dim] * 3) with A of length state_dim, then split(hz, [d_inner] * 2)
    import timm
    torch.manual_seed(0)
    model = timm.create_model("efficientvim_m1", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    mixers = [m for m in model.modules() if type(m).__name__ == "HSMSSD"]
    before = [(m.state_dim, m.d_inner) for m in mixers]
    res = prunekit.prune(model, (x,), ratio=0.3)
    assert model(x).shape == (1, 10)
    assert res.macs_after <= 0.8 * res.macs_before
    assert mixers and all(m.state_dim == m.A.shape[0] == m.dw.conv.out_channels // 3 for m in mixers)
    assert all(2 * m.d_inner == m.hz_proj.conv.out_channels for m in mixers)
    assert [(m.state_dim, m.d_inner) for m in mixers] != before


def test_efficientformerv2_attention_value_width_follows_its_pruned_projection():
    # Attention2d / Attention2dDownsample: (attn @ v).reshape(B, self.dh, H, W); heads are literal
    from timm.models.efficientformer_v2 import EfficientFormerV2
    torch.manual_seed(0)
    model = EfficientFormerV2(depths=(1, 1, 2, 2), embed_dims=(16, 24, 32, 48), img_size=64, num_vit=2,
                              downsamples=(False, True, True, True), num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    attns = [m for m in model.modules() if type(m).__name__.startswith("Attention2d")]
    before = [m.dh for m in attns]
    res = prunekit.prune(model, (x,), ratio=0.3)
    assert model(x).shape == (1, 10)
    assert res.macs_after <= 0.8 * res.macs_before
    assert attns and all(m.dh == m.v.conv.out_channels == m.num_heads * m.d for m in attns)
    assert any(m.dh < b for m, b in zip(attns, before, strict=True))


def test_a_sparsity_mask_is_cut_with_its_weight():
    from torch import nn

    import prunekit
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    prunekit.sparsify(net, 0.5)
    masks = [net[0].weight_mask.clone()]  # the output layer is left dense by default
    res = prunekit.prune(net, (torch.randn(2, 8),), ratio=0.5)
    kept = [16 - len(d["removed"]) for d in res.decisions]
    idx = torch.tensor(sorted(set(range(16)) - set(res.decisions[0]["removed"])))
    assert kept == [8] and net[0].weight_mask.shape == (8, 8)
    assert torch.equal(net[0].weight_mask, masks[0][idx])
    net(torch.randn(2, 8))  # the mask hooks still apply
    assert torch.equal(net[0].weight == 0, ~net[0].weight_mask | (net[0].weight == 0))


def test_a_literal_split_size_that_pruning_breaks_is_named_and_the_model_is_unchanged():
    import prunekit
    from prunekit.errors import PruningError

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(8, 4)

        def forward(self, x):
            u, v = torch.split(self.a(x), 8, dim=-1)
            return self.b(u * v)
    torch.manual_seed(0)
    model, x = Gated(), torch.randn(2, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruningError, match=r"Gated.forward.*torch.split\(x, 8\) on a dim that was pruned to 8"):
        prunekit.prune(model, (x,), ratio=0.5)
    assert model.a.out_features == 16 and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    res = prunekit.prune(model, (x,), ratio=0.5, ignore=[model.a])  # the fix the message names
    assert model(x).shape == (2, 4) and model.a.out_features == 16 and res is not None
