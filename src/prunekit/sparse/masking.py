"""Attached masks: keep pruned weights at exactly zero while a model trains, for one bool per weight.

A masked module gets a non-persistent bool buffer ``weight_mask`` and a forward pre-hook
(:class:`MaskHook`). The weight itself is zeroed in place, so there is never a second copy of it
(``torch.nn.utils.prune`` keeps ``weight_orig`` next to a dense mask; this does not). Two
mechanisms keep the zeros:

- a gradient hook multiplies the weight's gradient by the mask, so a fresh optimizer (SGD, Adam,
  AdamW with weight decay, ...) never moves a masked weight: its gradient, momentum and decay are 0;
- the pre-hook re-applies the mask before a forward whenever the weight was changed in place since
  the last time (``Tensor._version``), which covers optimizers with state from before pruning and
  weights edited by hand. In inference the check is one integer comparison.

>>> import torch
>>> lin = torch.nn.Linear(4, 2)
>>> attach_mask(lin, torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool))
>>> int((lin.weight == 0).sum()), is_masked(lin)
(4, True)
>>> detach_mask(lin); is_masked(lin), hasattr(lin, "weight_mask")
(False, False)
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaskHook", "attach_mask", "detach_mask", "is_masked", "masked_modules", "MASK_NAME"]

MASK_NAME = "weight_mask"


class MaskHook:
    """Forward pre-hook that keeps ``module.weight`` masked (picklable, so masked models save)."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.grad_handle = None
        self.param_id: int | None = None

    def __getstate__(self) -> dict:
        return {"state": "fresh"}  # tensor hooks do not survive pickling; re-registered on first use

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def apply(self, module: nn.Module) -> None:
        """Zero the masked weights in place and make sure the gradient hook is on the current weight."""
        weight, mask = module.weight, getattr(module, MASK_NAME)
        with torch.no_grad():
            weight.mul_(mask)
        self.version = weight._version
        if id(weight) != self.param_id and weight.requires_grad:
            self.remove_grad_hook()
            self.grad_handle = weight.register_hook(_GradMask(mask))
            self.param_id = id(weight)

    def remove_grad_hook(self) -> None:
        if self.grad_handle is not None:
            self.grad_handle.remove()
        self.grad_handle, self.param_id = None, None

    def __call__(self, module: nn.Module, args) -> None:
        if module.weight._version != self.version or id(module.weight) != self.param_id:
            self.apply(module)


class _GradMask:
    """Gradient hook: the gradient of a masked weight is zero."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.mask


def _hook_of(module: nn.Module) -> tuple[int, MaskHook] | None:
    for key, hook in module._forward_pre_hooks.items():
        if isinstance(hook, MaskHook):
            return key, hook
    return None


def is_masked(module: nn.Module) -> bool:
    """Whether ``module`` carries a prunekit mask."""
    return _hook_of(module) is not None


def masked_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every masked module in ``model``."""
    return [(n, m) for n, m in model.named_modules() if is_masked(m)]


def attach_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Zero ``module.weight`` where ``mask`` is False and keep it zero (replaces an existing mask)."""
    mask = mask.to(device=module.weight.device, dtype=torch.bool).reshape(module.weight.shape)
    found = _hook_of(module)
    if found is None:
        hook = MaskHook()
        module.register_forward_pre_hook(hook)
    else:
        hook = found[1]
        hook.remove_grad_hook()
    if MASK_NAME in module._buffers:
        module._buffers[MASK_NAME] = mask
    else:
        module.register_buffer(MASK_NAME, mask, persistent=False)
    hook.apply(module)


def detach_mask(module: nn.Module) -> None:
    """Bake the mask into the weight and remove the buffer and both hooks."""
    found = _hook_of(module)
    if found is None:
        return
    key, hook = found
    if MASK_NAME in module._buffers:
        with torch.no_grad():
            module.weight.mul_(module._buffers[MASK_NAME])
        del module._buffers[MASK_NAME]
    hook.remove_grad_hook()
    del module._forward_pre_hooks[key]
    for attr in ("_forward_pre_hooks_with_kwargs", "_forward_pre_hooks_always_called"):
        getattr(module, attr, {}).pop(key, None)
