"""The width-free forwards equal the originals on dense models and keep working once heads are pruned."""
import pytest
import timm
import torch
import torchvision
from torchvision.models.swin_transformer import ShiftedWindowAttention

import prunekit
from prunekit.structured.width_free import PrunedRelPosAttention, PrunedShiftedWindowAttention, swap_width_free


@pytest.mark.parametrize("shift,size", [([0, 0], 8), ([2, 2], 8), ([2, 2], 10), ([2, 1], 7)])
def test_swin_window_attention_equals_torchvision(shift, size):
    torch.manual_seed(0)
    attn = ShiftedWindowAttention(32, [4, 4], shift, num_heads=4).eval()
    x = torch.randn(2, size, size + 1, 32)
    with torch.no_grad():
        ref = attn(x)
        assert swap_width_free(attn) and isinstance(attn, PrunedShiftedWindowAttention)
        torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


def _swap_all(model):
    return sum(swap_width_free(m) for m in model.modules())


def test_whole_swin_t_and_relpos_vit_unchanged_by_the_swap():
    torch.manual_seed(0)
    for model, x in ((torchvision.models.swin_t(weights=None).eval(), torch.randn(1, 3, 64, 64)),
                     (timm.create_model("test_vit_relpos").eval(), torch.randn(2, 3, 160, 160))):
        with torch.no_grad():
            ref = model(x)
            assert _swap_all(model) > 0
            torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
        assert list(model.state_dict()) == list(model.state_dict())  # no new parameters or buffers


def test_pruned_heads_follow_the_weights():
    torch.manual_seed(0)
    model = timm.create_model("test_vit_relpos").eval()
    x = torch.randn(1, 3, 160, 160)
    heads = model.blocks[0].attn.num_heads
    res = prunekit.prune(model, (x,), ratio=0.5, units=("heads",), scope="local")
    attn = model.blocks[0].attn
    assert isinstance(attn, PrunedRelPosAttention) and attn.num_heads < heads
    assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim
    assert model(x).shape == (1, model.num_classes) and res.macs_ratio < 1


def test_swin_t_heads_pruned():
    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    before = model.features[1][0].attn.num_heads
    prunekit.prune(model, (x,), ratio=0.5, units=("heads",), scope="local")
    attn = model.features[1][0].attn
    assert attn.num_heads < before and attn.relative_position_bias_table.shape[1] == attn.num_heads
    assert model(x).shape == (1, 1000)


def test_failed_prune_restores_the_original_classes():
    class Fixed(torch.nn.Module):  # hard-codes its width: pruning the stream fails here
        def forward(self, x):
            return x.reshape(*x.shape[:-1], 32)

    model = torch.nn.Sequential(ShiftedWindowAttention(32, [4, 4], [2, 2], num_heads=4), Fixed(),
                                torch.nn.Linear(32, 32)).eval()
    with pytest.raises(prunekit.PruningError):
        prunekit.prune(model, (torch.randn(1, 8, 8, 32),), ratio=0.5)
    assert type(model[0]) is ShiftedWindowAttention


def test_shared_relative_position_bias_is_left_as_is():
    """vit_srelpos passes one bias to every block: their heads cannot differ, so attention stays intact."""
    from timm.models.vision_transformer_relpos import RelPosAttention
    torch.manual_seed(0)
    model = timm.create_model("vit_srelpos_small_patch16_224", img_size=64, depth=2).eval()
    x = torch.randn(1, 3, 64, 64)
    heads = model.blocks[0].attn.num_heads
    prunekit.prune(model, (x,), ratio=0.3)
    assert type(model.blocks[0].attn) is RelPosAttention and model.blocks[0].attn.num_heads == heads
    assert model(x).shape == (1, 1000)
