"""Pure-function properties of bipartite soft matching, size-weighted merging and unmerging."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.tokens.matching import (
    attention_bias,
    bipartite_soft_matching,
    merge_positions,
    merge_wavg,
    source_matrix,
    unmerge,
)

shapes = st.tuples(st.integers(1, 3), st.integers(2, 40), st.integers(1, 8), st.integers(0, 3),
                   st.integers(0, 25), st.integers(0, 10_000))


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_merge_preserves_mass_and_protects_prefix(args):
    B, N, C, p, r, seed = args
    p = min(p, N - 1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    m = bipartite_soft_matching(x, r, num_protected=p)
    r_eff = min(r, (N - p) // 2)
    assert m.r == r_eff
    merged, size = merge_wavg(m, x)
    assert merged.shape == (B, N - r_eff, C)
    assert torch.equal(size.sum(1), torch.full((B, 1), float(N), dtype=torch.float64))
    assert torch.equal(merged[:, :p], x[:, :p])                      # prefix untouched, in place
    assert torch.equal(size[:, :p], torch.ones(B, p, 1, dtype=torch.float64))
    # size-weighted average conserves the sum of token values
    assert torch.allclose((merged * size).sum(1), x.sum(1))
    # unmerge: shape back to N, and every original token sees the token it went into
    pos = merge_positions(m, None, N, B)
    restored = m.unmerge(merged)
    assert restored.shape == x.shape
    assert torch.equal(restored, unmerge(merged, pos))
    counts = torch.stack([torch.bincount(pos[b], minlength=N - r_eff) for b in range(B)])
    assert torch.equal(counts.double(), size[..., 0])
    assert torch.equal(source_matrix(pos, N - r_eff).sum(-1), size[..., 0].float())


def test_r_zero_is_identity():
    x = torch.randn(2, 9, 4)
    m = bipartite_soft_matching(x, 0, num_protected=1)
    merged, size = merge_wavg(m, x)
    assert merged is x and torch.equal(size, torch.ones(2, 9, 1))
    assert torch.equal(unmerge(x, None), x)


def test_most_similar_pairs_merge_first():
    # tokens 0,1 identical; 2,3 orthogonal to everything else
    metric = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    m = bipartite_soft_matching(metric, 1)
    x = torch.tensor([[[2.0], [4.0], [10.0], [20.0]]])
    merged, size = merge_wavg(m, x)
    assert merged.flatten().tolist() == [10.0, 3.0, 20.0]          # unmerged A (10), then B (3, 20)
    assert size.flatten().tolist() == [1.0, 2.0, 1.0]


def test_size_weighted_average():
    metric = torch.tensor([[[1.0, 0], [1.0, 0]]])
    m = bipartite_soft_matching(metric, 1)
    merged, size = merge_wavg(m, torch.tensor([[[0.0], [4.0]]]), torch.tensor([[[3.0], [1.0]]]))
    assert merged.item() == 1.0 and size.item() == 4.0


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 30), st.integers(0, 20), st.integers(0, 10_000))
def test_padding_never_averaged_into_real_tokens(n_real, r, seed):
    g = torch.Generator().manual_seed(seed)
    N = 32
    x = torch.randn(2, N, 6, generator=g, dtype=torch.float64)
    valid = torch.zeros(2, N, dtype=torch.bool)
    valid[0, :n_real] = True
    valid[1] = True
    size = valid[..., None].double()
    m = bipartite_soft_matching(x, r, num_protected=1, valid=valid)
    merged, new_size = merge_wavg(m, x, size)
    # changing the padding values changes no real token
    x2 = x.clone()
    x2[~valid] = 1e3
    merged2, _ = merge_wavg(m, x2, size)
    real = new_size[..., 0] > 0
    assert torch.equal(merged[real], merged2[real])
    assert new_size[0].sum() == n_real and new_size[1].sum() == N
    # as long as padding can pair with padding, no real token is merged with padding at all
    pos = merge_positions(m, None, N, 2)
    n_pad = N - n_real
    if r <= n_pad // 2 - 1:
        for tok in pos[0, valid[0]].unique():
            assert valid[0][pos[0] == tok].all()


def test_attention_bias():
    size = torch.tensor([[[1.0], [3.0], [0.0]]])
    b = attention_bias(size, True, torch.float32)
    assert b.shape == (1, 1, 1, 3)
    assert torch.allclose(b[0, 0, 0, :2], torch.tensor([1.0, 3.0]).log())
    assert b[0, 0, 0, 2] == torch.finfo(torch.float32).min
    assert attention_bias(size, False, torch.float32) is None
    assert attention_bias(size, False, torch.float32, has_padding=True)[0, 0, 0].tolist()[:2] == [0.0, 0.0]
    assert attention_bias(None, True, torch.float32) is None
