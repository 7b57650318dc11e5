"""Structured pruning: remove whole channels, neurons, attention heads and blocks.

``prune`` and ``groups`` are the dependency-aware engine (DepGraph-style coupled groups, Fang et
al., CVPR 2023); ``drop_layers`` removes whole blocks ranked by block influence (ShortGPT);
``slimming_penalty`` is Network Slimming's training-time L1 term on BatchNorm scales, after which
``prune(..., criterion="bn_scale")`` cuts the channels training has already switched off;
``prune_iteratively`` cuts in rounds with training between them, re-judging the survivors each time.

>>> import torch, prunekit
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
>>> prunekit.prune(net, (torch.randn(1, 8),), ratio=0.5).params_after < 178
True
"""
from prunekit.structured.api import GroupList, PruneResult, groups, prune
from prunekit.structured.blocks import drop_layers
from prunekit.structured.importance import Importance
from prunekit.structured.iterative import prune_iteratively
from prunekit.structured.slimming import SlimmingPenalty, slimming_penalty

__all__ = ["prune", "groups", "drop_layers", "PruneResult", "Importance", "GroupList", "slimming_penalty",
           "SlimmingPenalty", "prune_iteratively"]
