"""How each model family's transformer layers are driven by the token-merging engine.

One family per file. An adapter finds the layer stacks it can patch (:class:`Target`), checks every
layer before anything is changed, and splits a layer into the two halves between which ToMe
(Bolya et al., ICLR 2023) merges tokens: ``attention(layer, x, bias) -> (x, q, k)`` (the attention
sub-block with its residual, returning the per-head queries and keys) and ``mlp(layer, x) -> x``.
Both halves call the layer's own submodules (norms, projections, LayerScale, drop-path, MLP), so
features of the upstream layer are kept rather than re-implemented.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["Target", "Adapter", "ADAPTERS", "sdpa_heads"]


@dataclass
class Target:
    """A patchable stack: ``container`` (an ``nn.Sequential`` / ``nn.ModuleList`` of layers) whose
    iteration or call is redirected to the merging engine; ``grid``: where its tokens lie, for local
    merging (``None`` where the family does not say)."""

    container: nn.Module
    num_protected: int
    owner: nn.Module
    saved: dict[str, Any] = field(default_factory=dict)
    grid: tuple[int, int, int] | None = None  # (T, H, W) of the unprotected tokens, when fixed


class Adapter(Protocol):
    name: str

    def targets(self, root: nn.Module) -> list[Target]:
        """Patchable stacks inside ``root`` (checked: raise ``NotImplementedError`` on unsupported layers)."""
        ...

    def enter(self, target: Target, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                Callable[[torch.Tensor], Any]]:
        """From the stack's call arguments: tokens ``(B, N, C)``, a validity mask ``(B, N)`` or
        ``None``, and the function turning the final tokens into what the stack returns."""
        ...

    def attention(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ...

    def mlp(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        ...

    def install(self, target: Target) -> None:
        """Family-specific switches to flip while patched (saved in ``target.saved``)."""
        ...

    def uninstall(self, target: Target) -> None:
        ...


def sdpa_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
               dropout_p: float, scale: float | None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on ``(B, H, N, D)`` with an additive ``(B, 1, 1, N)`` bias,
    returned as ``(B, N, H * D)``."""
    out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    B, H, N, D = out.shape
    return out.transpose(1, 2).reshape(B, N, H * D)


def _adapters() -> list:
    from prunekit.tokens.adapters.hf import HFAdapter
    from prunekit.tokens.adapters.timm import TimmAdapter
    from prunekit.tokens.adapters.torch_mha import TorchMHAAdapter
    return [TimmAdapter(), HFAdapter(), TorchMHAAdapter()]


class _Registry:
    def __iter__(self):
        return iter(_adapters())


ADAPTERS = _Registry()
