"""Trace a model into coupled groups of prunable dimensions (after DepGraph, Fang et al., CVPR 2023).

One forward pass on ``example_inputs`` runs under a ``TorchDispatchMode`` that sees every ATen op
(``tracer.py``). Every dimension of every tensor carries a *label*: a tuple of dimension nodes whose
sizes multiply to the dimension's size (``dims.py``). A parameter's dimensions start as fresh nodes;
each op's rule states which dimensions must be equal (``conv``: the input's channels are the
weight's input channels; ``add``: both operands share every dimension; ``mm``: contraction dims
match) and the nodes are merged in a union-find. Reshapes split and merge labels, ``cat``/``split``
define a node as a concatenation of others, and grouped convolutions split channels into
``groups x per_group``. The rules live in ``rules/``, one module per op family, registered with
``@rule("view", "reshape")`` (``registry.py``); users register rules for their own ops the same way.

After the pass (``records.py``), every union-find class that is a leaf, touches at least one
parameter and is not *fixed* is a prunable group. Fixed are: the model's input and output
dimensions, batch/token/spatial dims, head dims, dims indexed by ops without a rule, and everything
inside them. Being conservative is always safe.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> [(g.size, g.params) for g in trace(net, (torch.randn(1, 4),)).groups()]
[(8, ['0.bias', '0.weight', '2.weight'])]
"""
from prunekit.structured.trace import rules  # noqa: F401 - registers the built-in rules
from prunekit.structured.trace.dims import DimGraph, Label
from prunekit.structured.trace.records import AttentionRecord, Group, MacRecord, Occurrence, TraceResult
from prunekit.structured.trace.registry import lookup, op_key, rule, unregister
from prunekit.structured.trace.tensors import flat_tensors
from prunekit.structured.trace.tracer import Tracer, run_with_module_stack, trace

__all__ = ["trace", "rule", "unregister", "lookup", "op_key", "Tracer", "TraceResult", "Group", "Occurrence",
           "DimGraph", "Label", "MacRecord", "AttentionRecord", "flat_tensors", "run_with_module_stack"]
