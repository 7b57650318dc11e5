"""Attribute fix-ups after surgery for modules whose forward reads a width from an attribute."""
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
