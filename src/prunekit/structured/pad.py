"""Zero-padding of pruned channel widths up to a multiple, for runtimes whose kernels are blocked.

onnxruntime's CPU convolutions run in a blocked layout (8 channels on AVX2, 16 on AVX-512); a
conv whose channel count is not a multiple of the block falls back to slower kernels. A model
pruned with free widths can be padded after the fact instead of pruned again with ``round_to``:
each coupled channel group (the same groups :func:`prunekit.groups` finds) grows to the next
multiple with zero weights, zero biases and zero BatchNorm shifts. A padded channel is zero (or a
constant, after an activation such as sigmoid) and every layer that reads it has zero weights for
it, so the outputs are those of the unpadded model up to float reassociation. Groups that
something else reads (a LayerNorm or GroupNorm over channels, a reshape into heads) would change
the result: groups holding a LayerNorm or GroupNorm are left alone, and :func:`pad_channels` checks
the outputs on the example inputs (a NaN fails the check) and restores the model if they differ.
The check sees only those inputs: an op that reads the channels without weights in a way that
rarely changes the result (a min or max over channels) is not caught by it.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.ReLU(),
...                           torch.nn.Conv2d(5, 6, 3)).eval()
>>> x = torch.randn(2, 3, 12, 12)
>>> ref = net(x)
>>> res = pad_channels(net, (x,), multiple=8)
>>> [net[0].out_channels, net[1].num_features, net[3].in_channels, net[3].out_channels]
[8, 8, 8, 6]
>>> res["padded_groups"], bool((net(x) - ref).abs().max() < 1e-5)
(1, True)
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.export import outputs_as_tensors
from prunekit.measure import count_params
from prunekit.structured.surgery import Snapshot, _owners, fix_module_attributes, sync_model_attributes

__all__ = ["pad_channels"]

_ONES = ("running_var",)  # buffers padded with ones rather than zeros (a variance)


def _call(model: nn.Module, inputs: Any):
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*(inputs if isinstance(inputs, (tuple, list)) else (inputs,)))


def _paddable(group) -> bool:
    """Only plain channel groups: each member dimension holds the units once, in order."""
    if group.unit != "channels":
        return False
    for o in group.occurrences:
        if o.owner.numel() != group.size or not torch.equal(o.owner, torch.arange(group.size)):
            return False
    return True


def pad_channels(model: nn.Module, example_inputs: Any, multiple: int = 8, *, only_convs: bool = True) -> dict:
    """Zero-pad every plain channel group of ``model`` (in place) to a multiple of ``multiple``.

    ``only_convs``: pad only groups that a convolution's channels belong to (what blocked conv
    kernels need); Linear-only groups are left alone. Returns ``{"padded_groups", "channels_added",
    "params_before", "params_after", "max_abs_diff"}``. Raises ``PruningError`` (the model restored
    exactly) when the padded model's outputs differ from the unpadded ones by more than
    ``1e-4 * (1 + max|output|)`` or its forward fails.
    """
    from prunekit.structured.api import groups as find_groups
    if multiple < 2:
        raise PruningError(type(model).__name__, "pad channels", f"multiple must be at least 2, got {multiple}")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = [t.detach().clone() for t in outputs_as_tensors(_call(model, example_inputs))]
        gl = find_groups(model, example_inputs)
    finally:
        model.train(was)
    mods = dict(model.named_modules())
    convs = {f"{n}.weight" for n, m in mods.items() if isinstance(m, nn.modules.conv._ConvNd)}
    norms = {f"{n}.weight" for n, m in mods.items() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))
             or "LayerNorm" in type(m).__name__}  # they normalise over the channels: padding would change them
    todo = [g for g in gl if g.size % multiple and _paddable(g) and not any(o.name in norms for o in g.occurrences)
            and (not only_convs or any(o.name in convs for o in g.occurrences))]
    before = count_params(model)
    if not todo:
        return {"padded_groups": 0, "channels_added": 0, "params_before": before, "params_after": before,
                "max_abs_diff": 0.0}
    named = dict(model.named_parameters(remove_duplicate=True))
    named.update(dict(model.named_buffers(remove_duplicate=True)))
    new: dict[str, torch.Tensor] = {}
    for g in todo:
        extra = -g.size % multiple
        for o in g.occurrences:
            t = new.get(o.name, named.get(o.name))
            if t is None:
                continue
            fill = torch.ones if o.name.rsplit(".", 1)[-1] in _ONES else torch.zeros
            shape = list(t.shape)
            shape[o.dim] = extra
            new[o.name] = torch.cat([t.detach(), fill(shape, dtype=t.dtype, device=t.device)], dim=o.dim)
    snap = Snapshot(model)
    owners = _owners(model)
    shapes = {}
    try:
        for name, t in new.items():
            old = named[name]
            for m, k, is_param in owners.get(id(old), []):
                if is_param:
                    m._parameters[k] = nn.Parameter(t, requires_grad=old.requires_grad)
                else:
                    m._buffers[k] = t
            shapes[name] = (tuple(old.shape), tuple(t.shape))
        fix_module_attributes(model, gl.trace, {}, shapes)
        sync_model_attributes(model)
        model.eval()
        with torch.no_grad():
            got = outputs_as_tensors(_call(model, example_inputs))
        diff, scale = 0.0, 0.0
        for r, o in zip(ref, got, strict=True):
            if r.shape != o.shape:
                raise PruningError(type(model).__name__, "pad channels",
                                   f"output shape {tuple(o.shape)} after padding, {tuple(r.shape)} before")
            # a NaN (a zero-padded divisor, e.g. weight norm's |v|) must fail the check, not vanish in max()
            diff = max(diff, float(torch.nan_to_num((r.float() - o.float()).abs(), nan=float("inf")).max()))
            scale = max(scale, float(r.float().abs().max()))
        if not diff <= 1e-4 * (1 + scale):
            raise PruningError(type(model).__name__, "pad channels", f"padding changed the outputs by {diff:.3g} "
                               "(a normalisation or reshape reads the padded channels); left unpadded")
    except PruningError:
        snap.restore()
        raise
    except Exception as e:  # noqa: BLE001 - any failing forward restores the model
        snap.restore()
        raise PruningError(type(model).__name__, "pad channels", f"{type(e).__name__}: {e}") from e
    finally:
        model.train(was)
    return {"padded_groups": len(todo), "channels_added": sum(-g.size % multiple for g in todo),
            "params_before": before, "params_after": count_params(model), "max_abs_diff": diff}
