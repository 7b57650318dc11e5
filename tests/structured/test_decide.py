"""The global unit budget of prune(): the vectorised selection equals the one-unit-at-a-time greedy."""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.structured.api import _decide, _standardise


def _greedy(groups, scores, ratio, max_group_ratio):
    """Reference: all units of one kind sorted by standardised score (ties by group order), each taken
    while the budget lasts and its group stays above its floor."""
    kept = [g.size for g in groups]
    for unit in ("channels", "heads"):
        idx = [i for i, g in enumerate(groups) if g.unit == unit]
        budget = int(round(ratio * sum(groups[i].size for i in idx)))
        pool = sorted((v, i) for i in idx for v in _standardise(scores[i]).tolist())
        for _, i in pool:
            if budget <= 0:
                break
            if kept[i] - 1 >= max(1, math.ceil(groups[i].size * (1 - max_group_ratio))):
                kept[i] -= 1
                budget -= 1
    return kept


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.tuples(st.sampled_from([1, 2, 3, 8, 16]), st.sampled_from(["channels", "heads"])),
                      min_size=1, max_size=10),
       ratio=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.9]), max_group_ratio=st.sampled_from([1.0, 0.9, 0.5]),
       ties=st.booleans(), seed=st.integers(0, 2**16))
def test_global_selection_equals_the_greedy(sizes, ratio, max_group_ratio, ties, seed):
    gen = torch.Generator().manual_seed(seed)
    groups = [SimpleNamespace(size=s, unit=u) for s, u in sizes]
    scores = [torch.randint(0, 3, (g.size,), generator=gen).double() if ties else
              torch.randn(g.size, generator=gen, dtype=torch.float64) for g in groups]
    assert _decide(groups, scores, ratio, "global", None, max_group_ratio) == \
        _greedy(groups, scores, ratio, max_group_ratio)
