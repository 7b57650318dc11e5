import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.sparse import masks as M


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 7), extra=st.integers(1, 8), rows=st.integers(1, 6), groups=st.integers(1, 5),
       conv=st.booleans(), seed=st.integers(0, 2**16))
def test_nm_mask_keeps_exactly_n_per_group(n, extra, rows, groups, conv, seed):
    m = n + extra
    g = torch.Generator().manual_seed(seed)
    shape = (rows, groups * m, 1, 1) if conv else (rows, groups * m)
    score = torch.rand(shape, generator=g)
    mask = M.nm_mask(score, n, m)
    assert mask.shape == score.shape and mask.dtype == torch.bool
    lay = mask.reshape(rows, -1)
    per_group = lay.reshape(-1, m).sum(1)
    assert torch.all(per_group == n)
    # the kept entries are the n largest of each group
    s_lay = score.reshape(-1, m)
    kept_min = torch.where(lay.reshape(-1, m), s_lay, torch.inf).min(1).values
    dropped_max = torch.where(~lay.reshape(-1, m), s_lay, -torch.inf).max(1).values
    assert torch.all(kept_min >= dropped_max)


def test_nm_mask_rejects_indivisible():
    with pytest.raises(ValueError, match="not divisible by M=4"):
        M.nm_mask(torch.rand(3, 6), 2, 4)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_unstructured_counts(sparsity):
    scores = [torch.rand(10, 20), torch.rand(7, 3, 3, 3)]
    masks = M.unstructured_masks(scores, sparsity)
    total = sum(s.numel() for s in scores)
    assert sum(int((~m).sum()) for m in masks) == round(sparsity * total)
    kept = torch.cat([s[m] for s, m in zip(scores, masks, strict=True)])
    dropped = torch.cat([s[~m] for s, m in zip(scores, masks, strict=True)])
    if dropped.numel() and kept.numel():
        assert dropped.max() <= kept.min()


def test_row_masks_same_count_per_row():
    mask = M.row_masks(torch.rand(6, 40), 0.3)
    assert torch.all((~mask).sum(1) == 12)


@pytest.mark.parametrize("k", [0, 1, 5, 12 * 6, 12 * 6 + 5, 240])
def test_spread_row_masks_counts_and_order(k):
    score = torch.rand(6, 40, generator=torch.Generator().manual_seed(k))
    mask = M.spread_row_masks(score, k)
    per_row = (~mask).sum(1)
    assert int(per_row.sum()) == k and int(per_row.max() - per_row.min()) <= 1
    for r in range(6):  # within a row the lowest scores go
        if 0 < per_row[r] < 40:
            assert score[r][~mask[r]].max() <= score[r][mask[r]].min()
    if k % 6 == 0:
        assert torch.equal(mask, M.row_masks(score, k / 240))


def test_block_masks_remove_whole_tiles():
    score = torch.rand(16, 32)
    mask = M.block_masks([score], 0.5, 4, 8)[0]
    tiles = mask.reshape(4, 4, 4, 8).permute(0, 2, 1, 3).reshape(16, 32)
    assert torch.all(tiles == tiles[:, :1])  # every tile all-kept or all-dropped
    assert (~mask).float().mean().item() == 0.5


def test_wanda_scores_formula():
    w = torch.tensor([[1.0, -2.0, 3.0]])
    norm = torch.tensor([2.0, 1.0, 0.1])
    assert torch.allclose(M.wanda_scores(w, norm), torch.tensor([[2.0, 2.0, 0.3]]))


@pytest.mark.parametrize("bad", ["", "2:2", "0:4", "block:0x4", "dense", "4:2"])
def test_parse_pattern_rejects(bad):
    with pytest.raises(ValueError):
        M.parse_pattern(bad)
