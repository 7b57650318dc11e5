"""Video token merging: the redundant space-time tokens of a static background go first, no retraining.

In a clip over a still background, a background location shows the same tubelet in every time
slice, so its tokens repeat. Plain ToMe (Bolya et al., ICLR 2023, which reports 2.2x on video
ViT-L) merges at most half the tokens of a layer, one pair at a time, so this redundancy is removed
over several layers. Here, as the early-block background merging of vid-TLDR (Choi, Lee, Choi, Kim,
Kim, Kim, Park, "vid-TLDR: Training Free Token merging for Light-weight Video Transformer", CVPR 2024)
intends, the first layer merges whole time tubes: the locations whose tokens are most alike across
every time slice (the static background; a moving item makes its locations' tokens differ) each
become one token, up to 3 of 4 tokens gone per location in one step; global ToMe then runs in the
later layers. Works on timm ViTs whose patch embed folds time into the token rows (``frames`` /
``tubelet`` attributes, as the zoo's :class:`prunekit.zoo.models.TubeletEmbed`).

>>> from prunekit.zoo.models import build
>>> import torch
>>> from prunekit.tokens import last_info, unpatch
>>> vivit = build("motion-vivit").eval()       # 4 time slices x 7 x 7 tubelets + class token
>>> _ = merge_video(vivit, tubes=30, r=4, trace_source=True)
>>> _ = vivit(torch.randn(1, 1, 8, 56, 56))
>>> last_info(vivit).tokens[:3]                 # 197 - 30 * 3, then 4 per block
[107, 103, 99]
>>> _ = unpatch(vivit)
"""
from __future__ import annotations

from torch import nn

from prunekit.errors import PruningError
from prunekit.tokens.groups import LocalMerge
from prunekit.tokens.merge import merge
from prunekit.tokens.schedule import RSpec

__all__ = ["merge_video"]


def merge_video(model: nn.Module, tubes: int, r: RSpec = 0, *, span: int | None = None, layer: int = 0,
                threshold: float | None = None, **kwargs) -> nn.Module:
    """Patch ``model`` to merge ``tubes`` time tubes per clip in ``layer`` (each: one location's tokens
    over ``span`` consecutive time slices, default all), then ``r`` tokens per later layer by global
    ToMe; returns ``model`` (undo with :func:`unpatch`).

    ``threshold``: merge only tubes whose mean pairwise key cosine is at least this. Other keywords
    go to :func:`prunekit.tokens.merge`.
    """
    from timm.models.vision_transformer import VisionTransformer

    from prunekit.tokens.adapters.timm import token_grid
    grids = {token_grid(m) for m in model.modules() if isinstance(m, VisionTransformer)}
    if len(grids) != 1 or None in grids:
        raise PruningError(type(model).__name__, "merge video tokens", f"it has no single fixed space-time token "
                           f"grid (found {sorted(map(str, grids))}); it needs a timm ViT with a video patch embed")
    (t, _, _), = grids
    if t < 2:
        raise PruningError(type(model).__name__, "merge video tokens", "its tokens have one time slice (an image "
                           "model?); use merge_dense or merge")
    span = t if span is None else int(span)
    return merge(model, r, local=LocalMerge(int(tubes), (span, 1, 1), int(layer), threshold), **kwargs)

