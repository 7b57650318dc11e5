"""Motion clips under camera motion (load_motion(camera=True), the clips of motion-vivit-pan)."""
import doctest

import torch

import prunekit.data.motion as motion_module
from prunekit.data import load_fashion_mnist, load_motion
from prunekit.data.motion import MAX_JITTER, MAX_PAN, make_clip, make_pan_clip


def test_docstring_examples_run():
    assert doctest.testmod(motion_module).failed == 0


def test_pan_clips_are_deterministic_and_hold_the_same_items():
    x, y = load_motion("test", n=6, seed=1, camera=True)
    assert x.shape == (6, 1, 8, 56, 56) and x.dtype == torch.uint8
    x2, y2 = load_motion("test", n=3, seed=1, camera=True)   # clip i does not depend on n
    assert torch.equal(x[:3], x2) and torch.equal(y[:3], y2)
    assert torch.equal(y, load_motion("test", n=6, seed=1)[1])   # the same garments as the still-camera clips
    assert not torch.equal(x[:3], load_motion("test", n=3, seed=2, camera=True)[0])


def test_the_background_moves_while_a_still_camera_keeps_it():
    blank = torch.zeros(1, 28, 28, dtype=torch.uint8)
    for seed in range(4):
        still = make_clip(blank, torch.Generator().manual_seed(seed))[0].float()
        moving = make_pan_clip(blank, torch.Generator().manual_seed(seed))[0].float()
        assert torch.equal(still, still[:1].expand_as(still))
        change = (moving[1:] - moving[:-1]).abs().mean((1, 2))       # grey levels per pixel, frame to frame
        assert (change > 1.0).all()
        assert torch.equal(moving, make_pan_clip(blank, torch.Generator().manual_seed(seed))[0].float())
    assert MAX_PAN * 7 + 2 * MAX_JITTER < 16                          # the view never leaves the texture


def test_the_item_is_pasted_unchanged_over_the_moving_background():
    items, _ = load_fashion_mnist("test")
    item = items[0]
    clip = make_pan_clip(item, torch.Generator().manual_seed(5))[0]
    mask = item[0] > 8
    for frame in clip:
        hits = [bool((frame[r:r + 28, c:c + 28][mask] == item[0][mask]).all()) for r in range(29) for c in range(29)]
        assert any(hits)
