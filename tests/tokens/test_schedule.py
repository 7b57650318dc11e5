"""r schedules: constant, linear, per-layer lists, clipping and the MAC-target solver."""
import pytest

from prunekit.tokens.schedule import (
    Constant,
    Linear,
    PerLayer,
    as_schedule,
    clip,
    decreasing,
    max_r,
    solve_for_macs,
    token_counts,
)


def test_constant_and_clipping():
    assert Constant(8).per_layer(12, 197, 1) == [8] * 12
    assert Constant(16).per_layer(12, 197, 1) == [16] * 11 + [10]
    assert clip([100], 11, 1) == [5]
    assert token_counts(Constant(8).per_layer(12, 197, 1), 197)[-1] == 197 - 96


def test_linear_and_decreasing():
    assert Linear(0, 8).per_layer(5, 197, 1) == [0, 2, 4, 6, 8]
    rs = decreasing(8).per_layer(12, 197, 1)
    assert rs[0] == 16 and rs[-1] == 0 and rs == sorted(rs, reverse=True)
    assert abs(sum(rs) - 96) <= 2


def test_per_layer_and_as_schedule():
    assert as_schedule(3) == Constant(3)
    assert as_schedule([1, 2]).per_layer(4, 50, 1) == [1, 2, 0, 0]
    assert as_schedule(Linear(2, 2)) == Linear(2, 2)
    with pytest.raises(ValueError):
        PerLayer([1, 2, 3]).per_layer(2, 50, 1)
    with pytest.raises(ValueError):
        as_schedule(-1)
    with pytest.raises(TypeError):
        as_schedule("8")


def test_max_r():
    assert max_r(12, 197, 1) == 15
    assert Constant(15).per_layer(12, 197, 1) == [15] * 12


def test_solve_for_macs():
    macs = lambda s: 1000 - 37 * min(s.r, 20)
    s = solve_for_macs(macs, 1000, 0.6, 64)
    assert macs(s) <= 600 and macs(Constant(s.r - 1)) > 600
    assert solve_for_macs(macs, 1000, 1.0, 64) == Constant(0)
    assert solve_for_macs(macs, 1000, 0.1, 64) == Constant(64)       # unreachable: the limit
    with pytest.raises(ValueError):
        solve_for_macs(macs, 1000, 0.0, 64)
