"""Token reduction inside transformers: token merging (ToMe), local-then-global merging for dense
prediction (:func:`merge_dense`), time-tube merging for video (:func:`merge_video`), learned token
pruning (:class:`DynamicViT`, trained with :func:`prunekit.train.fit_dynamic`), EViT (:func:`evit`: keep the
most attended tokens, fuse the rest into one) and a top-k token-drop reference.

Token merging after Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023: similar tokens are
merged in every layer, training-free, so later layers see fewer tokens.

>>> import timm, torch
>>> import prunekit.tokens as tokens
>>> vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=4).eval()
>>> _ = tokens.merge(vit, r=4)                      # constant r per layer
>>> vit(torch.randn(1, 3, 64, 64)).shape
torch.Size([1, 1000])
>>> _ = tokens.merge(vit, r=tokens.decreasing(4))   # or [8, 4, 2, 0], or target_macs=0.6
>>> _ = tokens.unpatch(vit)
"""
from prunekit.tokens.dense import merge_dense
from prunekit.tokens.dynamic import DynamicViT
from prunekit.tokens.groups import LocalMerge
from prunekit.tokens.matching import (
                                      Matching,
                                      bipartite_soft_matching,
                                      merge_positions,
                                      merge_wavg,
                                      source_matrix,
                                      unmerge,
)
from prunekit.tokens.merge import MergeConfig, TokenInfo, is_patched, last_info, merge, schedule_of, unpatch
from prunekit.tokens.prune import drop, evit
from prunekit.tokens.schedule import Constant, Linear, PerLayer, Proportion, Schedule, decreasing, max_r, token_counts
from prunekit.tokens.video import merge_video

__all__ = ["merge", "merge_dense", "merge_video", "LocalMerge", "DynamicViT",
           "unpatch", "unmerge", "drop", "evit", "is_patched", "last_info", "schedule_of", "MergeConfig",
           "TokenInfo", "Matching", "bipartite_soft_matching", "merge_wavg", "merge_positions",
           "source_matrix", "Schedule", "Constant", "Linear", "PerLayer", "Proportion", "decreasing", "max_r",
           "token_counts"]
