"""Video token merging: the redundant space-time tokens of the background go first, no retraining.

In a clip over a still background, a background location shows the same tubelet in every time
slice, so its tokens repeat. Plain ToMe (Bolya et al., ICLR 2023, which reports 2.2x on video
ViT-L) merges at most half the tokens of a layer, one pair at a time, so this redundancy is removed
over several layers. Here, as the early-block background merging of vid-TLDR (Choi, Lee, Choi, Kim,
Kim, Kim, Park, "vid-TLDR: Training Free Token merging for Light-weight Video Transformer", CVPR 2024)
intends, the first layer merges whole time tubes: the locations whose tokens are most alike across
every time slice (the static background; a moving item makes its locations' tokens differ) each
become one token, up to 3 of 4 tokens gone per location in one step; global ToMe then runs in the
later layers (``method="tubes"``, the default).

``method="saliency"`` finds the background from attention instead of from repetition, so it does not
rely on a still camera: as vid-TLDR scores tokens, block ``layer``'s attention ranks every token by
the attention sharp queries give it; for ``early`` blocks the background is merged by bipartite
matching over all space-time tokens while the ``keep`` share of most salient tokens is kept out, then
global ToMe runs (:mod:`prunekit.tokens.saliency`). Both work on timm ViTs whose patch embed folds time
into the token rows (``frames`` / ``tubelet`` attributes, as the zoo's
:class:`prunekit.zoo.models.TubeletEmbed`).

>>> from prunekit.zoo.models import build
>>> import torch
>>> from prunekit.tokens import last_info, unpatch
>>> vivit = build("motion-vivit").eval()       # 4 time slices x 7 x 7 tubelets + class token
>>> _ = merge_video(vivit, tubes=30, r=4, trace_source=True)
>>> _ = vivit(torch.randn(1, 1, 8, 56, 56))
>>> last_info(vivit).tokens[:3]                 # 197 - 30 * 3, then 4 per block
[107, 103, 99]
>>> _ = merge_video(vivit, method="saliency", keep=0.3, background_r=90, r=4, trace_source=True)
>>> _ = vivit(torch.randn(1, 1, 8, 56, 56))
>>> last_info(vivit).tokens[:3]                 # 59 salient tokens kept out, 90 of the 137 others merged
[107, 103, 99]
>>> _ = unpatch(vivit)
"""
from __future__ import annotations

from torch import nn

from prunekit.errors import PruningError
from prunekit.tokens.groups import LocalMerge
from prunekit.tokens.merge import merge
from prunekit.tokens.saliency import KEEP, SaliencyMerge
from prunekit.tokens.schedule import RSpec, as_schedule

__all__ = ["merge_video", "METHODS"]

METHODS = ("tubes", "saliency")


def merge_video(model: nn.Module, tubes: int | None = None, r: RSpec = 0, *, method: str = "tubes",
                span: int | None = None, layer: int = 0, threshold: float | None = None, keep: float | None = None,
                early: int | None = None, background_r: int | tuple[int, ...] | None = None,
                **kwargs) -> nn.Module:
    """Patch ``model`` to merge the background of its clips early, then ``r`` tokens per later layer by
    global ToMe; returns ``model`` (undo with :func:`unpatch`). Other keywords go to
    :func:`prunekit.tokens.merge` (``target_macs`` then solves for ``r``).

    ``method="tubes"``: merge ``tubes`` time tubes per clip in ``layer`` (each: one location's tokens over
    ``span`` consecutive time slices, default all); ``threshold``: merge only tubes whose mean pairwise
    key cosine is at least this.

    ``method="saliency"``: score the tokens in ``layer`` from its attention, keep the ``keep`` share
    (default 0.3) of most salient tokens out of the merging for ``early`` blocks (default 1) and merge
    ``background_r`` background tokens in each (an int or one per block, in rounds of bipartite matching;
    default: 0.73 of the background left, 100 of 137 with 196 tokens).
    See :class:`prunekit.tokens.saliency.SaliencyMerge`.
    """
    from timm.models.vision_transformer import VisionTransformer

    from prunekit.tokens.adapters.timm import token_grid
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    saliency = method == "saliency"
    given = {"tubes": tubes, "span": span, "threshold": threshold} if saliency else \
        {"keep": keep, "early": early, "background_r": background_r}
    if any(v is not None for v in given.values()):
        raise ValueError(f"method={method!r} does not take {', '.join(k for k, v in given.items() if v is not None)}")
    if not saliency and tubes is None:
        raise ValueError("method='tubes' needs tubes= (how many time tubes to merge)")
    stage = SaliencyMerge(KEEP if keep is None else keep, background_r, 1 if early is None else early,
                          int(layer)) if saliency else None
    vits = [m for m in model.modules() if isinstance(m, VisionTransformer)]
    grids = {token_grid(m) for m in vits}
    if len(grids) != 1 or None in grids:
        raise PruningError(type(model).__name__, "merge video tokens", f"it has no single fixed space-time token "
                           f"grid (found {sorted(map(str, grids))}); it needs a timm ViT with a video patch embed")
    (t, _, _), = grids
    if t < 2:
        raise PruningError(type(model).__name__, "merge video tokens", "its tokens have one time slice (an image "
                           "model?); use merge_dense or merge")
    if stage is not None:
        for vit in vits:
            try:
                stage.check(len(vit.blocks), as_schedule(r))
            except ValueError as err:
                raise PruningError(type(vit).__name__, "merge video tokens by saliency", str(err)) from None
        return merge(model, r, saliency=stage, **kwargs)
    span = t if span is None else int(span)
    return merge(model, r, local=LocalMerge(int(tubes), (span, 1, 1), int(layer), threshold), **kwargs)
