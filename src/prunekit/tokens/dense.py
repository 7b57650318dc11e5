"""Local-then-global token merging for dense prediction (segmentation, detection), no retraining.

After ALGM (Norouzi, Orlova, de Geus, Dubbelman, "ALGM: Adaptive Local-then-Global Token Merging for
Efficient Semantic Segmentation with Plain Vision Transformers", CVPR 2024). Plain ToMe matches any
token with any other from the first layer on, where tokens still mostly say what their pixels look
like, so a patch of garment edge can be averaged with a far-away patch of the same texture and the
boundary is blurred when the tokens are un-merged. Here the first merge is local: after the first
layer's attention, the 2x2 windows whose four tokens are most alike (in meaning, the attention keys,
and in place, by construction) each become one token; global bipartite merging (ToMe) then runs in
the later layers on what is left. Every merged token is un-merged to all its patches before the
decoder (the patched stack returns one token per patch), so the dense head runs unchanged.

>>> import timm, torch
>>> from prunekit.tokens import last_info, unpatch
>>> vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=4, num_classes=0, global_pool="").eval()
>>> x = torch.randn(2, 3, 64, 64)
>>> dense = vit(x)
>>> _ = merge_dense(vit, windows=2, r=1, trace_source=True)
>>> vit(x).shape == dense.shape, last_info(vit).tokens   # 17 -> 11 (2 windows of 4) -> 10 -> 9 -> 8
(True, [11, 10, 9, 8])
>>> _ = unpatch(vit)
"""
from __future__ import annotations

from torch import nn

from prunekit.tokens.groups import LocalMerge
from prunekit.tokens.merge import merge
from prunekit.tokens.schedule import RSpec

__all__ = ["merge_dense"]


def merge_dense(model: nn.Module, windows: int, r: RSpec = 0, *, window: int = 2, layer: int = 0,
                threshold: float | None = None, **kwargs) -> nn.Module:
    """Patch ``model`` to merge ``windows`` of its ``window`` x ``window`` patch windows in ``layer``,
    then ``r`` tokens per later layer by global ToMe; returns ``model`` (undo with :func:`unpatch`).

    ``threshold``: merge only windows whose mean pairwise key cosine is at least this (ALGM's
    adaptive rule; the batch's smallest count is used, so at batch 1 each image gets its own).
    Other keywords go to :func:`prunekit.tokens.merge` (``prop_attn``, ``trace_source``,
    ``target_macs`` with ``example_inputs``: ``r`` is then solved with the local stage in place).
    """
    return merge(model, r, local=LocalMerge(int(windows), (1, int(window), int(window)), int(layer), threshold),
                 **kwargs)

