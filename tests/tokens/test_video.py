"""Time-tube merging for video transformers (merge_video) on the zoo's ViViT architecture."""
import doctest

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import prunekit.tokens as tokens
import prunekit.tokens.video as video_module
from prunekit.errors import PruningError
from prunekit.measure import count_macs
from prunekit.tokens.adapters.timm import token_grid
from prunekit.zoo.models import build


def test_docstring_examples_run():
    assert doctest.testmod(video_module).failed == 0


@pytest.fixture
def vivit():
    return build("motion-vivit").eval()   # 8x56x56 clips, 2x8x8 tubelets: 4 x 7 x 7 tokens + class


def static_clip(vivit: VisionTransformer) -> torch.Tensor:
    """A clip whose frames are all the same, with the spatial position embedding tiled over time (as the
    zoo's image-to-video inflation does): every location's token is the same in all four time slices."""
    with torch.no_grad():
        pos = vivit.pos_embed[0, 1:].view(4, 49, -1)
        vivit.pos_embed[0, 1:] = pos[:1].expand_as(pos).reshape(196, -1)
    return torch.randn(2, 1, 1, 56, 56).expand(2, 1, 8, 56, 56).contiguous()


def test_token_grid_reads_time_from_the_tubelet_embed(vivit):
    assert token_grid(vivit) == (4, 7, 7)
    assert token_grid(VisionTransformer(img_size=32, patch_size=4, depth=1)) == (1, 8, 8)


@torch.no_grad()
def test_nothing_merged_equals_dense(vivit):
    x = torch.randn(2, 1, 8, 56, 56)
    want = vivit(x)
    tokens.merge_video(vivit, tubes=0)
    assert (vivit(x) - want).abs().max() <= 1e-5


@torch.no_grad()
def test_merging_a_static_background_is_lossless(vivit):
    x = static_clip(vivit)
    want = vivit(x)
    tokens.merge_video(vivit, tubes=49, trace_source=True)           # 197 -> 50 tokens in block 0
    assert (vivit(x) - want).abs().max() <= 1e-5
    info = tokens.last_info(vivit)
    assert info.tokens == [50] * 8 and info.r == [147] + [0] * 7
    pos = info.positions[:, 1:].view(2, 4, 49)
    assert (pos == pos[:, :1]).all()                                  # a location's 4 tokens: one token


@torch.no_grad()
def test_moving_locations_stay_unmerged(vivit):
    """Tubes are chosen by how alike their tokens are: where an item moves, tokens differ over time."""
    x = static_clip(vivit)
    x[:, :, 4:, 8:16, 8:16] += 3.0                       # a change in time slices 2-3 at location (1, 1)
    tokens.merge_video(vivit, tubes=48, trace_source=True)
    vivit(x)
    pos = tokens.last_info(vivit).positions[:, 1:].view(2, 4, 49)
    assert (pos[:, :, 8].unique(dim=1).shape[1] > 1)      # location 8 = (1, 1) keeps its own tokens
    moved = [loc for loc in range(49) if loc != 8]
    assert (pos[:, :, moved] == pos[:, :1, moved]).all()


@torch.no_grad()
def test_spans_schedules_and_macs(vivit):
    x = torch.randn(1, 1, 8, 56, 56)
    dense = count_macs(vivit, (x,))
    tokens.merge_video(vivit, tubes=20, r=4, span=2, trace_source=True)
    vivit(x)
    info = tokens.last_info(vivit)
    assert info.r == [20] + [4] * 7 and info.tokens[0] == 177
    tokens.merge_video(vivit, tubes=35, r=8)
    assert count_macs(vivit, (x,)) < 0.4 * dense
    tokens.unpatch(vivit)
    assert count_macs(vivit, (x,)) == dense


def test_image_models_are_refused(module_state):
    vit = VisionTransformer(img_size=32, patch_size=4, depth=2)
    before = module_state(vit)
    with pytest.raises(PruningError, match="VisionTransformer: cannot merge video tokens: .*one time slice"):
        tokens.merge_video(vit, tubes=4)
    with pytest.raises(PruningError, match="no single fixed space-time token grid"):
        tokens.merge_video(torch.nn.Linear(2, 2), tubes=4)
    assert module_state(vit) == before


def test_training_mode_backward(vivit):
    vivit.train()
    tokens.merge_video(vivit, tubes=30, r=4)
    vivit(torch.randn(2, 1, 8, 56, 56)).sum().backward()
    assert torch.isfinite(vivit.patch_embed.proj.weight.grad).all()
