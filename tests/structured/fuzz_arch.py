"""Random architectures from a small grammar, for fuzzing prune and sparsify (tests and benchmarks).

A spec is a tuple of ops applied to an image batch ``(B, 3, 8, 8)``, then global pooling and a
Linear head. Ops: ``conv`` (dense, grouped or depthwise), ``bn``, ``relu``, ``res`` (a residual
pair of convs), ``cat`` (two branches concatenated), ``chunk`` (split in two halves, one through a
ReLU, cat back), ``split`` (a fixed-size torch.split), ``attn`` (multi-head self-attention over the
pixels, reshape/permute/flatten in and out), ``tied`` (a conv whose weight is shared with an earlier one).
"""
from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn


class FuzzNet(nn.Module):
    def __init__(self, spec: tuple, classes: int = 5):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList()
        c = 3
        for op in spec:
            kind = op[0]
            if kind == "conv":
                out, k, grouped = op[1], op[2], op[3]
                groups = c if grouped == "dw" else (2 if grouped == "g2" and c % 2 == 0 and out % 2 == 0 else 1)
                out = c if grouped == "dw" else out
                self.layers.append(nn.Conv2d(c, out, k, padding=k // 2, groups=groups))
                c = out
            elif kind == "bn":
                self.layers.append(nn.BatchNorm2d(c))
            elif kind == "relu":
                self.layers.append(nn.ReLU())
            elif kind == "res":
                self.layers.append(nn.ModuleList([nn.Conv2d(c, op[1], 3, padding=1), nn.BatchNorm2d(op[1]),
                                                  nn.Conv2d(op[1], c, 3, padding=1)]))
            elif kind == "cat":
                self.layers.append(nn.ModuleList([nn.Conv2d(c, op[1], 1), nn.Conv2d(c, op[2], 3, padding=1)]))
                c = op[1] + op[2]
            elif kind in ("chunk", "split"):
                self.layers.append(nn.Identity())
            elif kind == "attn":
                heads = op[1]
                self.layers.append(nn.ModuleList([nn.Conv2d(c, 8 * heads, 1),
                                                  nn.MultiheadAttention(8 * heads, heads, batch_first=True)]))
                c = 8 * heads
            elif kind == "tied":
                conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
                self.layers.append(conv)
                self.layers.append(nn.Conv2d(c, c, 3, padding=1, bias=False))
                self.layers[-1].weight = conv.weight
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        i = 0
        for op in self.spec:
            kind, layer = op[0], self.layers[i]
            i += 1
            if kind in ("conv", "bn", "relu"):
                x = layer(x)
            elif kind == "res":
                x = x + layer[2](torch.relu(layer[1](layer[0](x))))
            elif kind == "cat":
                x = torch.cat([layer[0](x), layer[1](x)], 1)
            elif kind == "chunk" and x.shape[1] % 2 == 0:
                a, b = x.chunk(2, 1)
                x = torch.cat([torch.relu(a), b], 1)
            elif kind == "split" and x.shape[1] >= 2:
                a, b = torch.split(x, [1, x.shape[1] - 1], 1)
                x = torch.cat([b, torch.sigmoid(a)], 1)
            elif kind == "attn":
                y = layer[0](x)
                b, c, h, w = y.shape
                t = y.flatten(2).permute(0, 2, 1)
                t = t + layer[1](t, t, t, need_weights=False)[0]
                x = t.permute(0, 2, 1).reshape(b, c, h, w)
            elif kind == "tied":
                x = self.layers[i](torch.relu(layer(x)))
                i += 1
        return self.head(x.mean((2, 3)))


WIDTHS = [4, 6, 8, 12]
GROUPING = ["1", "dw", "g2"]
OPS = ["conv", "bn", "relu", "res", "cat", "chunk", "split", "attn", "tied"]


def _op():
    width = st.sampled_from(WIDTHS)
    return st.one_of(
        st.tuples(st.just("conv"), width, st.sampled_from([1, 3]), st.sampled_from(GROUPING)),
        st.tuples(st.just("bn")), st.tuples(st.just("relu")),
        st.tuples(st.just("res"), width), st.tuples(st.just("cat"), width, width),
        st.tuples(st.just("chunk")), st.tuples(st.just("split")),
        st.tuples(st.just("attn"), st.sampled_from([1, 2])), st.tuples(st.just("tied")))


def architectures():
    """Specs of 1-6 ops that start with a conv (so the net has something to prune)."""
    first = st.tuples(st.just("conv"), st.sampled_from([4, 8]), st.just(3), st.just("1"))
    return st.tuples(first, st.lists(_op(), min_size=0, max_size=5)).map(lambda t: (t[0], *t[1]))


def random_spec(rng) -> tuple:
    """The same grammar drawn from a ``random.Random`` (the long benchmark run)."""
    ops = [("conv", rng.choice([4, 8]), 3, "1")]
    for _ in range(rng.randint(0, 5)):
        kind = rng.choice(OPS)
        if kind == "conv":
            ops.append(("conv", rng.choice(WIDTHS), rng.choice([1, 3]), rng.choice(GROUPING)))
        elif kind == "res":
            ops.append(("res", rng.choice(WIDTHS)))
        elif kind == "cat":
            ops.append(("cat", rng.choice(WIDTHS), rng.choice(WIDTHS)))
        elif kind == "attn":
            ops.append(("attn", rng.choice([1, 2])))
        else:
            ops.append((kind,))
    return tuple(ops)
