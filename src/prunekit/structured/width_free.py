"""Attention modules whose forward derives sizes from the input width, made to follow their weights.

timm's ``RelPosAttention`` reshapes its output to the *input* width and torchvision's Swin
``ShiftedWindowAttention`` computes ``head_dim = input width // num_heads``. Both are right for a
dense model and wrong once heads (or the residual stream) are pruned. Each class here is a subclass
with the same parameters, buffers and outputs whose forward reads the sizes from the projection
weights instead; the surgery swaps the instance's class (reversibly: it is still an instance of the
original class, and its state dict is unchanged).

>>> import torch
>>> from torchvision.models.swin_transformer import ShiftedWindowAttention
>>> attn = ShiftedWindowAttention(32, [4, 4], [2, 2], num_heads=4).eval()
>>> x = torch.randn(1, 8, 8, 32)
>>> ref = attn(x)
>>> swap_width_free(attn)
True
>>> bool(torch.allclose(attn(x), ref, atol=1e-5))
True
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer_relpos import RelPosAttention
from torch import nn
from torch.nn import functional as F
from torchvision.models.swin_transformer import ShiftedWindowAttention

__all__ = ["PrunedRelPosAttention", "PrunedShiftedWindowAttention", "SWAPS", "swap_width_free"]


class PrunedRelPosAttention(RelPosAttention):
    """timm ``RelPosAttention`` whose output width is ``num_heads * head_dim``, not the input width."""

    def forward(self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rel_pos is not None:
            bias = self.rel_pos.get_bias()
        else:
            bias = shared_rel_pos
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, -1)))


def _window_ids(h: int, w: int, win: tuple[int, int], shift: tuple[int, int], device) -> torch.Tensor:
    """Region id of every pixel of the shifted map, partitioned into windows: (windows, win_h * win_w)."""
    ids = torch.zeros(h, w, device=device)
    for i, hs in enumerate((slice(0, h - win[0]), slice(h - win[0], h - shift[0]), slice(h - shift[0], h))):
        for j, ws in enumerate((slice(0, w - win[1]), slice(w - win[1], w - shift[1]), slice(w - shift[1], w))):
            ids[hs, ws] = 3 * i + j
    return ids.view(h // win[0], win[0], w // win[1], win[1]).permute(0, 2, 1, 3).reshape(-1, win[0] * win[1])


class PrunedShiftedWindowAttention(ShiftedWindowAttention):
    """torchvision Swin (v1) window attention with ``head_dim`` taken from ``qkv``, not the input width.

    Same computation as torchvision's ``shifted_window_attention``: pad to whole windows, cyclic shift,
    attention inside each window with the relative position bias (and a mask between regions that
    the shift brought together), then the inverse steps.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
        ph, pw = x.shape[1:3]
        sh, sw = (0 if wh >= ph else self.shift_size[0]), (0 if ww >= pw else self.shift_size[1])
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        nh, nw = ph // wh, pw // ww
        tokens = x.view(b, nh, wh, nw, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, wh * ww, c)
        heads = self.num_heads
        q, k, v = self.qkv(tokens).view(tokens.shape[0], wh * ww, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.get_relative_position_bias()  # (1, heads, N, N)
        if sh or sw:
            ids = _window_ids(ph, pw, (wh, ww), (sh, sw), x.device)
            mask = (ids.unsqueeze(1) != ids.unsqueeze(2)).to(q.dtype) * -100.0  # (windows, N, N)
            bias = (bias.unsqueeze(1) + mask.unsqueeze(1).unsqueeze(0)).expand(b, -1, -1, -1, -1)  # (b, win, h, N, N)
            bias = bias.reshape(b * nh * nw, heads, wh * ww, wh * ww)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        out = self.proj(out.transpose(1, 2).reshape(tokens.shape[0], wh * ww, -1))
        out = F.dropout(out, p=self.dropout, training=self.training)
        c_out = out.shape[-1]
        out = out.view(b, nh, nw, wh, ww, c_out).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c_out)
        if sh or sw:
            out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
        return out[:, :h, :w, :].contiguous()


SWAPS: dict[type, type] = {RelPosAttention: PrunedRelPosAttention, ShiftedWindowAttention: PrunedShiftedWindowAttention}


def swap_width_free(module: nn.Module) -> bool:
    """Give ``module`` the width-free forward of its class, if it has one; True when swapped (or already)."""
    if type(module) in SWAPS.values():
        return True
    target = SWAPS.get(type(module))
    if target is None:
        return False
    if target is PrunedRelPosAttention and module.rel_pos is None:
        return False  # a bias shared by all blocks (vit_srelpos) ties every block's heads: left as is
    module.__class__ = target
    return True
