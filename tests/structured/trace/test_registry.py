"""The tracer's rule registry: a user's rule makes a custom op's channels prunable, exactly."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.structured.trace import lookup, op_key, rule, unregister


@torch.library.custom_op("prunekit_test::shift", mutates_args=())
def shift(x: torch.Tensor) -> torch.Tensor:
    """Elementwise ``x + 1``: keeps its input's shape, so its channels may be pruned."""
    return x + 1.0


@shift.register_fake
def _(x):
    return torch.empty_like(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.b(shift(self.a(x)))


def _same_labels(tr, func, args, kwargs, out):
    tr.set(out, list(tr.lab(args[0])))


@pytest.fixture
def shift_rule():
    rule("prunekit_test::shift")(_same_labels)
    yield
    unregister("prunekit_test::shift")


def test_op_key_names_aten_ops_plainly_and_others_with_their_namespace():
    assert op_key(torch.ops.aten.mm.default) == "mm"
    assert op_key(torch.ops.prunekit_test.shift.default) == "prunekit_test::shift"


def test_an_op_without_a_rule_fixes_its_dimensions():
    x = torch.randn(2, 6)
    assert lookup(torch.ops.prunekit_test.shift.default) is None
    assert len(prunekit.groups(Net(), (x,))) == 0


def test_a_user_rule_makes_the_custom_op_prunable_and_pruning_is_exact(shift_rule):
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(4, 6)
    (group,) = prunekit.groups(model, (x,))
    assert group.size == 16
    pruned = copy.deepcopy(model)
    prunekit.prune(pruned, (x,), ratio=0.5)
    assert pruned.a.out_features == 8 and pruned.b.in_features == 8
    kept = [i for i in range(16) if any(torch.equal(pruned.a.weight[j], model.a.weight[i]) for j in range(8))]
    assert len(kept) == 8
    with torch.no_grad():
        # the surviving units compute exactly what they did in the dense model
        ref = model.b.weight[:, kept] @ shift(model.a(x))[:, kept].T
        got = pruned.b.weight @ shift(pruned.a(x)).T
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_unregister_restores_the_safe_default(shift_rule):
    x = torch.randn(2, 6)
    assert len(prunekit.groups(Net(), (x,))) == 1
    unregister("prunekit_test::shift")
    assert len(prunekit.groups(Net(), (x,))) == 0


def test_a_later_rule_replaces_an_earlier_one_and_match_rules_apply_by_key():
    calls: list[str] = []

    def first(tr, func, args, kwargs, out):
        calls.append("first")
        _same_labels(tr, func, args, kwargs, out)

    def second(tr, func, args, kwargs, out):
        calls.append("second")
        _same_labels(tr, func, args, kwargs, out)

    try:
        rule(match=lambda key: key.startswith("prunekit_test::"))(first)
        assert lookup(torch.ops.prunekit_test.shift.default) is first
        rule("prunekit_test::shift")(second)   # exact names win over match rules
        prunekit.groups(Net(), (torch.randn(2, 6),))
        assert calls == ["second"]
    finally:
        unregister("prunekit_test::shift")
        from prunekit.structured.trace import registry
        registry._BY_MATCH[:] = [(m, f) for m, f in registry._BY_MATCH if f is not first]
        registry._CACHE.clear()
    assert lookup(torch.ops.prunekit_test.shift.default) is None


def test_rule_needs_a_name_or_a_match():
    with pytest.raises(ValueError, match="names or match"):
        rule()
