"""Local (group) merging, the pure core: window tiling, group similarity, and the matching it builds."""
import doctest
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit.tokens.groups as groups_module
from prunekit.tokens.groups import LocalMerge, group_matching, group_scores, matching_from_assignment, window_groups
from prunekit.tokens.matching import merge_positions, merge_wavg


def test_docstring_examples_run():
    assert doctest.testmod(groups_module).failed == 0


def test_window_groups_tile_space_and_time():
    g = window_groups((1, 4, 6), (1, 2, 2)).view(4, 6)
    assert g.max() == 5 and torch.equal(g[:2, :2], torch.zeros(2, 2, dtype=torch.long))
    assert torch.equal(torch.bincount(g.flatten()), torch.full((6,), 4))
    tubes = window_groups((4, 2, 3), (4, 1, 1)).view(4, 6)
    assert all(torch.equal(tubes[t], torch.arange(6)) for t in range(4))   # one tube per location
    half = window_groups((4, 1, 2), (2, 1, 1)).tolist()
    assert half == [0, 1, 0, 1, 2, 3, 2, 3]
    edge = window_groups((1, 5, 5), (1, 2, 2)).view(5, 5)
    assert (edge[4] == -1).all() and (edge[:, 4] == -1).all() and (edge[:4, :4] >= 0).all()


@pytest.mark.parametrize("grid,window", [((1, 4, 4), (1, 5, 1)), ((1, 4, 4), (1, 1, 1)), ((0, 4, 4), (1, 2, 2))])
def test_window_groups_rejects_windows_that_do_not_fit(grid, window):
    with pytest.raises(ValueError, match="window|grid"):
        window_groups(grid, window)


def test_local_merge_validates():
    assert LocalMerge(3, [1, 2, 2]).window == (1, 2, 2)
    for bad in (dict(count=-1), dict(count=1.5), dict(count=2, layer=-1), dict(count=2, window=(1, 1, 1)),
                dict(count=2, window=(2, 2))):
        with pytest.raises(ValueError, match="LocalMerge"):
            LocalMerge(**bad)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.sampled_from([(1, 4, 4), (2, 2, 3), (1, 6, 4)]), st.integers(1, 6), st.integers(0, 999))
def test_group_scores_are_mean_pairwise_cosine(B, grid, c, seed):
    window = (grid[0], 1, 1) if grid[0] > 1 else (1, 2, 2)
    groups = window_groups(grid, window)
    x = torch.randn(B, groups.numel(), c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = group_scores(x, groups)
    unit = x / x.norm(dim=-1, keepdim=True)
    for b, gid in itertools.product(range(B), range(int(groups.max()) + 1)):
        members = unit[b, groups == gid]
        cos = members @ members.T
        k = members.shape[0]
        want = (cos.sum() - cos.diagonal().sum()) / (k * (k - 1))
        assert torch.allclose(got[b, gid], want)


def test_assignment_matching_merges_and_unmerges():
    m = matching_from_assignment(torch.tensor([[0, 2, 1, 1], [0, 1, 1, 2]]), 3)
    x = torch.arange(8.).view(2, 4, 1)
    assert m.merge(x, "sum").flatten().tolist() == [0., 5., 1., 4., 11., 7.]
    assert m.merge(x, "amax").flatten().tolist() == [0., 3., 1., 4., 6., 7.]
    assert m.unmerge(m.merge(x, "sum")).flatten().tolist() == [0., 1., 5., 5., 4., 11., 11., 7.]


def test_group_matching_merges_the_most_alike_windows_into_their_mean():
    groups = window_groups((1, 4, 4), (1, 2, 2))       # windows 0..3
    g = torch.Generator().manual_seed(0)
    metric = torch.randn(2, 17, 8, generator=g)
    for b, alike in ((0, (1, 3)), (1, (0, 2))):        # make two windows per image uniform
        for w in alike:
            metric[b, 1:][groups == w] = metric[b, 1 + int((groups == w).nonzero()[0])].clone()
    x = torch.randn(2, 17, 5, generator=g, dtype=torch.float64)
    m = group_matching(metric, groups, count=2, num_protected=1)
    assert m.r == 6
    merged, size = merge_wavg(m, x)
    assert merged.shape == (2, 11, 5)
    assert torch.equal(merged[:, :1], x[:, :1])                       # class token in place
    assert size[:, -2:].flatten().tolist() == [4.0] * 4 and (size[:, :-2] == 1).all()
    for b, alike in ((0, (1, 3)), (1, (0, 2))):
        for slot, w in zip((9, 10), alike, strict=True):
            assert torch.allclose(merged[b, slot], x[b, 1:][groups == w].mean(0))
        alone = [i for i in range(16) if int(groups[i]) not in alike]
        assert torch.equal(merged[b, 1:9], x[b, 1:][alone])           # left-alone tokens, in order
    pos = merge_positions(m, None, 17, 2)
    assert torch.equal(m.unmerge(merged), merged.gather(1, pos[..., None].expand(-1, -1, 5)))


def test_group_matching_threshold_takes_the_smallest_count_of_the_batch():
    groups = window_groups((1, 4, 4), (1, 2, 2))
    metric = torch.randn(2, 16, 4)
    metric[0] = 1.0                                                    # image 0: all 4 windows uniform
    metric[1, groups == 2] = torch.tensor([1., 2., 3., 4.])           # image 1: one uniform window
    assert group_matching(metric, groups, 4, threshold=0.999).r == 3
    assert group_matching(metric, groups, 4).r == 12
    assert group_matching(metric[:1], groups, 4, threshold=0.999).r == 12   # batch 1: its own count
    assert group_matching(metric, groups, 0).r == 0
    assert group_matching(metric, groups, 99).r == 12                  # clipped to the windows there are


def test_group_matching_rejects_bad_groupings():
    with pytest.raises(ValueError, match="unprotected tokens"):
        group_matching(torch.randn(1, 10, 4), window_groups((1, 2, 4), (1, 2, 2)), 1, num_protected=1)
    with pytest.raises(ValueError, match="equal sizes"):
        group_matching(torch.randn(1, 5, 4), torch.tensor([0, 0, 0, 1, 1]), 1)
