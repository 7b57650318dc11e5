"""Token merging inside attention windows: Swin and SAM-style windowed ViTs (timm), no retraining.

Plain ToMe shrinks one token sequence from block to block. A windowed backbone cannot: every
block cuts a fixed grid into fixed windows (Swin shifts them every other block and merges patches
between stages; SAM's image encoder returns the grid to a conv neck). So here each block merges,
computes and un-merges, as ToMe for Stable Diffusion does (Bolya and Hoffman, CVPR-W 2023), but
inside each window:

1. the block's normalised tokens are cut into its own windows (with Swin's cyclic shift and
   padding), and in every window the ``r`` most alike pairs of tokens (bipartite soft matching on
   the cosine of the tokens, the two sets alternating) become one token each;
2. attention runs on the merged tokens of each window with proportional attention (``log size``
   on every key) and the window's relative position bias (and Swin's shift mask) read at one
   position of each merged token, its representative (a gather, far cheaper than averaging the whole
   bias over every group; merged tokens are alike neighbours, so they are close); tokens of
   different shift regions are never merged together while another pair is left;
3. the result is un-merged to every position of its window, so the residual, the window reversal,
   the shift and the grid are exactly the block's own;
4. the MLP half runs on the same windows merged the same way (on by default, ``mlp=False`` to
   keep it whole), and is un-merged again.

:func:`prunekit.tokens.merge_dense` puts a local stage first in every window (after ALGM): the
``windows`` 2x2 neighbourhoods of the window whose tokens are most alike collapse into one token each
(never across shift regions or into padding while another is left), and the ``r`` pairs of step 1
are then matched among what is left. Blocks before its ``layer`` merge nothing; its adaptive
``threshold`` is refused (every window of a batch merges the same count).

The grid therefore leaves every block whole: Swin's patch merging, SAM's neck and any dense head
run unchanged. Blocks with global attention (SAM's ``global_attn_indexes``) merge the same share of
their tokens over the whole grid. ``r=0`` gives the dense outputs (within float rounding).

Supported: timm ``SwinTransformerBlock`` (Swin v1) and the blocks of timm's
``VisionTransformerSAM`` with relative position bias or none. Refused with a message naming the
class: rotary position embedding (it rotates each position's queries and keys, which a merged
token no longer has), Swin V2 (its cosine attention and log-spaced position MLP are not wired)
and any other block that has a ``window_size``.

>>> import timm, torch
>>> from prunekit.tokens import merge, unpatch
>>> swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=112, depths=(2, 2), num_heads=(3, 6),
...                          embed_dim=48, num_classes=10).eval()
>>> x = torch.randn(2, 3, 112, 112)
>>> dense = swin(x)
>>> bool((merge(swin, r=0)(x) - dense).abs().max() < 1e-5)
True
>>> merge(swin, r=12)(x).shape                     # 12 of every window's 49 tokens merged away
torch.Size([2, 10])
>>> bool((unpatch(swin)(x) - dense).abs().max() == 0)
True
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.tokens.groups import LocalMerge, group_matching, window_layout
from prunekit.tokens.matching import Matching, bipartite_soft_matching, compose, identity_matching, merge_wavg

__all__ = ["WindowMerge", "window_matching", "windowed_blocks", "patch_windows", "unpatch_windows", "is_window_patched",
           "representatives", "window_bias"]

KEY = "_tome_window"


@dataclass
class WindowMerge:
    """One block's setting: ``r`` tokens merged per window, proportional attention, merged MLP."""

    r: int
    prop_attn: bool = True
    mlp: bool = True
    area: int = 0   # on a SAM global block: the window area of the model's windowed blocks (its share of r)
    local: int = 0  # merge_dense's local stage: this many (h, w) groups of each window collapse first
    window: tuple[int, int] = (2, 2)


def window_matching(tokens: torch.Tensor, grid: tuple[int, int], r: int, local: int = 0,
                    window: tuple[int, int] = (2, 2), valid: torch.Tensor | None = None,
                    regions: torch.Tensor | None = None) -> Matching:
    """One block's matching of its windows ``tokens`` ``(B, h*w, C)`` laid on ``grid`` ``(h, w)``.

    With ``local`` (merge_dense, after ALGM), the ``local`` ``window``-sized groups of neighbours
    whose tokens are most alike collapse into one token each first (groups that hold padding or two
    shift regions only when no other is left); then ``r`` more tokens merge by bipartite soft
    matching over the window. ``valid`` ``(B, N)`` marks real tokens, ``regions`` ``(B, N)`` Swin's
    shift regions.

    >>> import torch
    >>> t = torch.randn(1, 16, 8)
    >>> m = window_matching(t, (4, 4), r=2, local=1)      # one 2x2 group of 4 -> 1, then 2 pairs
    >>> m.r, m.merge(t).shape
    (5, torch.Size([1, 11, 8]))
    """
    first = identity_matching()
    if local > 0:
        lay = window_layout((1, *grid), (1, *window))
        allowed = None
        if valid is not None or regions is not None:
            ok = torch.ones(tokens.shape[0], lay.count, dtype=torch.bool, device=tokens.device)
            inside, members = lay.inside.to(tokens.device), lay.members.to(tokens.device)
            idx = members.expand(tokens.shape[0], -1)
            if valid is not None:
                pad = (~valid[:, inside]).to(torch.uint8)
                ok &= ok.new_zeros(ok.shape, dtype=torch.uint8).scatter_reduce(1, idx, pad, "amax") == 0
            if regions is not None:
                ids = regions[:, inside].long()
                hi = ids.new_zeros(ok.shape).scatter_reduce(1, idx, ids, "amax", include_self=False)
                lo = ids.new_zeros(ok.shape).scatter_reduce(1, idx, ids, "amin", include_self=False)
                ok &= hi == lo
            allowed = ok
        first = group_matching(tokens, lay, local, allowed=allowed)
        if first.r:
            tokens = merge_wavg(first, tokens, None if valid is None else valid[..., None].to(tokens.dtype))[0]
            valid = None if valid is None else first.merge(valid[..., None].to(tokens.dtype), "amax")[..., 0] > 0
            regions = None if regions is None else first.merge(regions[..., None].float(), "amax")[..., 0].long()
    return compose(first, bipartite_soft_matching(tokens, r, valid=valid, regions=regions))


def _classes() -> dict[type, str]:
    from timm.models.swin_transformer import SwinTransformerBlock
    from timm.models.vision_transformer_sam import Block as SamBlock
    return {SwinTransformerBlock: "swin", SamBlock: "sam"}


def windowed_blocks(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(name, block, family)`` for every windowed-attention block of ``model`` prunekit can merge in.

    Raises ``NotImplementedError`` naming the class for a windowed block it cannot (checked for every
    block before anything changes).
    """
    classes = _classes()
    found = []
    for name, m in model.named_modules():
        cls = type(m).__bases__[0] if KEY in m.__dict__ else type(m)   # already patched: its own class
        family = classes.get(cls)
        if family is None:
            if hasattr(m, "window_size") and hasattr(m, "attn") and hasattr(m, "mlp"):
                raise NotImplementedError(
                    f"{name or 'model'} is {type(m).__name__}: token merging inside attention windows supports "
                    "timm's SwinTransformerBlock (Swin v1) and VisionTransformerSAM blocks")
            continue
        if family == "sam" and getattr(m.attn, "rope", None) is not None:
            raise NotImplementedError(
                f"{name}.attn of {type(m).__name__} uses rotary position embedding: a merged token has no single "
                "position to rotate, so token merging inside its windows is not supported")
        found.append((name, m, family))
    return found


def is_window_patched(model: nn.Module) -> bool:
    return any(KEY in m.__dict__ for m in model.modules())


def patch_windows(blocks: list[tuple[str, nn.Module, str]], rs: list[int], prop_attn: bool = True,
                  mlp: bool = True, local: LocalMerge | None = None) -> None:
    """Switch each block to its merging class with ``rs[i]`` tokens merged per window (reversible).

    ``local``: merge_dense's stage, ``local.count`` groups of ``local.window`` per window in every
    block from ``local.layer`` on (blocks before it merge nothing)."""
    area = max((window_tokens(b) for _, b, f in blocks if f == "sam" and b.window_size > 0), default=0)
    for i, ((_, blk, family), r) in enumerate(zip(blocks, rs, strict=True)):
        if local is None:
            cfg = WindowMerge(int(r), prop_attn, mlp, area)
        elif i < local.layer:
            cfg = WindowMerge(0, prop_attn, mlp, area, 0, local.window[1:])
        else:
            cfg = WindowMerge(int(r), prop_attn, mlp, area, local.count, local.window[1:])
        blk.__dict__[KEY] = cfg
        blk.__class__ = _merging_class(type(blk), family)


def unpatch_windows(model: nn.Module) -> None:
    """Undo :func:`patch_windows`: every block gets its class back and loses the added attribute."""
    for m in model.modules():
        if KEY in m.__dict__:
            del m.__dict__[KEY]
            m.__class__ = m.__class__.__bases__[0]


_MERGING: dict[type, type] = {}


def _merging_class(base: type, family: str) -> type:
    """The block class with the merging forward, one per timm class, named ``WindowMerging<class>`` and
    reachable as an attribute of this module (so :func:`prunekit.save` / ``load`` find it by name)."""
    if base not in _MERGING:
        forward = _swin_forward if family == "swin" else _sam_forward
        _MERGING[base] = type(f"WindowMerging{base.__name__}", (base,),
                              {"forward": forward, "__module__": __name__})
    return _MERGING[base]


def __getattr__(name: str) -> type:
    for base, family in _classes().items():
        if name == f"WindowMerging{base.__name__}":
            return _merging_class(base, family)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def window_tokens(blk: nn.Module) -> int:
    """Tokens per attention window of a windowed block (the whole grid for a SAM global block: 0)."""
    ws = blk.window_size
    if isinstance(ws, int):
        return ws * ws
    return int(ws[0]) * int(ws[1])


# ---- the shared middle: merge a window batch, attend, un-merge ----

def representatives(match: Matching, batch: int, num_tokens: int, device: torch.device) -> torch.Tensor:
    """``(B, N')``: for each merged token, the original position of one of the tokens it holds (the last).

    Its relative position bias and shift mask are read at that position: a gather of ``N'^2`` entries
    per head instead of averaging the full ``N^2`` bias over every merged group.

    >>> import torch
    >>> m = bipartite_soft_matching(torch.tensor([[[1., 0.], [1., 0.], [0., 1.]]]), r=1)
    >>> representatives(m, 1, 3, torch.device("cpu")).tolist()   # merged tokens {2} and {0, 1}
    [[2, 1]]
    """
    pos = torch.arange(num_tokens, device=device, dtype=torch.float32).view(1, -1, 1).expand(batch, -1, 1)
    return match.merge(pos, "amax")[..., 0].long()


def window_bias(bias: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
    """A bias ``(W, H, N, N)`` shared by groups of windows (``W`` = 1, or one per window position, the
    batch of ``B = b * W`` windows being window-major per image), read at the representatives ``rep``
    ``(B, N')``: ``(B, H, N', N')``.

    >>> import torch
    >>> window_bias(torch.arange(9.).view(1, 1, 3, 3), torch.tensor([[2, 1]])).tolist()
    [[[[8.0, 7.0], [5.0, 4.0]]]]
    """
    W, H, N, _ = bias.shape
    B, n = rep.shape
    which = torch.arange(B, device=rep.device) % W
    base = (which[:, None] * H + torch.arange(H, device=rep.device)) * (N * N)          # (B, H)
    idx = base[:, :, None] + (rep[:, :, None] * N + rep[:, None, :]).view(B, 1, n * n)  # (B, H, n*n)
    return torch.take(bias.contiguous(), idx).view(B, H, n, n)


def _attend(attn: nn.Module, t: torch.Tensor, size: torch.Tensor, bias_fn, prop_attn: bool,
            match: Matching) -> torch.Tensor:
    """Multi-head attention of ``attn``'s own projections on merged tokens ``t`` ``(B, N', C)``."""
    B, n, _ = t.shape
    heads = attn.num_heads
    qkv = attn.qkv(t).reshape(B, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    bias = bias_fn(q)       # (B, H, N', N') read at the merged tokens' positions, or None
    if prop_attn and match.r > 0:
        logs = size.clamp_min(1e-6).log().view(B, 1, 1, n)   # padding (size 0) is all but masked out
        bias = logs if bias is None else bias + logs
    o = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                   dropout_p=attn.attn_drop.p if attn.training else 0.0)
    o = torch.cat(o.unbind(1), dim=-1)   # (B, n, H*D); transpose+reshape traces to a view ONNX export rejects
    return attn.proj_drop(attn.proj(o))


def _mlp_merged(blk: nn.Module, windows: torch.Tensor, match: Matching, size0: torch.Tensor | None) -> torch.Tensor:
    """The block's MLP on its window tokens ``(B, N, C)`` merged by ``match``, un-merged again."""
    t, _ = merge_wavg(match, windows, size0)
    return match.unmerge(blk.mlp(t))


# ---- SAM (timm vision_transformer_sam.Block) ----

def _sam_forward(self, x: torch.Tensor) -> torch.Tensor:
    from timm.models.vision_transformer_sam import get_rel_pos, window_partition, window_unpartition
    cfg: WindowMerge = self.__dict__[KEY]
    B, H, W, C = x.shape
    ws = self.window_size

    def windows_of(y):
        if ws > 0:
            return window_partition(y, ws)
        return y, None

    shortcut = x
    y, pad_hw = windows_of(self.norm1(x))
    Bw, h, w, _ = y.shape
    N = h * w
    tokens = y.reshape(Bw, N, C)
    valid = None
    if pad_hw is not None and tuple(pad_hw) != (H, W):
        valid = windows_of(x.new_ones(B, H, W, 1))[0].reshape(Bw, N) > 0
    share = N / cfg.area if ws == 0 and cfg.area else 1   # a global block merges its share of the grid
    match = window_matching(tokens, (h, w), round(cfg.r * share), round(cfg.local * share), cfg.window, valid)
    size0 = valid[..., None].to(x.dtype) if valid is not None else None
    t, size = merge_wavg(match, tokens, size0)
    attn = self.attn

    rep = representatives(match, Bw, N, x.device)

    def bias_fn(q):   # SAM's decomposed bias: q_i . Rh[row_i, row_j] + q_i . Rw[col_i, col_j], at the representatives
        if not attn.use_rel_pos:
            return None
        rh, rw = get_rel_pos(h, h, attn.rel_pos_h), get_rel_pos(w, w, attn.rel_pos_w)   # (h, h, d), (w, w, d)
        rows, cols = rep // w, rep % w                                                   # (Bw, N')
        rel_h = torch.einsum("bhnd,bnkd->bhnk", q, rh[rows])                            # (Bw, heads, N', h)
        rel_w = torch.einsum("bhnd,bnkd->bhnk", q, rw[cols])
        # spread over the keys by their row and column: one-hot matmuls are cheaper than gathers on CPU
        at_row = nn.functional.one_hot(rows, h).to(q.dtype).transpose(1, 2)[:, None]    # (Bw, 1, h, N')
        at_col = nn.functional.one_hot(cols, w).to(q.dtype).transpose(1, 2)[:, None]
        return rel_h @ at_row + rel_w @ at_col

    o = match.unmerge(_attend(attn, t, size, bias_fn,
                              cfg.prop_attn, match))
    o = self.drop_path1(self.ls1(o.view(Bw, h, w, C)))
    if ws > 0:
        o = window_unpartition(o, ws, (H, W), pad_hw)
    x = shortcut + o
    if not cfg.mlp or match.r == 0:
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
    z, _ = windows_of(self.norm2(x))
    z = _mlp_merged(self, z.reshape(Bw, N, C), match, size0).view(Bw, h, w, C)
    if ws > 0:
        z = window_unpartition(z, ws, (H, W), pad_hw)
    return x + self.drop_path2(self.ls2(z))


# ---- Swin v1 (timm swin_transformer.SwinTransformerBlock) ----

def _swin_forward(self, x: torch.Tensor) -> torch.Tensor:
    from timm.models.swin_transformer import window_partition, window_reverse
    cfg: WindowMerge = self.__dict__[KEY]
    B, H, W, C = x.shape
    wh, ww = self.window_size
    sh, sw = self.shift_size
    has_shift = bool(sh or sw)
    pad_h, pad_w = (wh - H % wh) % wh, (ww - W % ww) % ww

    def windows_of(y):
        if has_shift:
            y = torch.roll(y, shifts=(-sh, -sw), dims=(1, 2))
        y = nn.functional.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        return window_partition(y, self.window_size).reshape(-1, wh * ww, y.shape[-1])

    def grid_of(windows):
        y = window_reverse(windows.view(-1, wh, ww, windows.shape[-1]), self.window_size, H + pad_h, W + pad_w)
        y = y[:, :H, :W, :].contiguous()
        return torch.roll(y, shifts=(sh, sw), dims=(1, 2)) if has_shift else y

    y = self.norm1(x)
    tokens = windows_of(y)
    Bw, N, _ = tokens.shape
    mask = self.get_attn_mask(nn.functional.pad(y, (0, 0, 0, pad_w, 0, pad_h))) if getattr(
        self, "dynamic_mask", False) else self.attn_mask
    regions = None
    if mask is not None:   # (nW, N, N), 0 within a region: the region of a token = its first 0 column
        regions = (mask == 0).to(torch.uint8).argmax(-1).repeat(B, 1)
    valid = None
    if pad_h or pad_w:
        valid = windows_of(x.new_ones(B, H, W, 1))[..., 0] > 0
    match = window_matching(tokens, (wh, ww), cfg.r, cfg.local, cfg.window, valid, regions)
    size0 = valid[..., None].to(x.dtype) if valid is not None else None
    t, size = merge_wavg(match, tokens, size0)
    attn = self.attn

    rep = representatives(match, Bw, N, x.device)

    def bias_fn(q):   # the relative position bias and the shift mask, read at the representatives
        bias = window_bias(attn._get_rel_pos_bias(), rep)                      # (Bw, heads, N', N')
        if mask is not None:
            bias = bias + window_bias(mask[:, None], rep)
        return bias

    o = match.unmerge(_attend(attn, t, size, bias_fn,
                              cfg.prop_attn, match))
    x = x + self.drop_path1(grid_of(o))
    if not cfg.mlp or match.r == 0:
        return x + self.drop_path2(self.mlp(self.norm2(x)))
    return x + self.drop_path2(grid_of(_mlp_merged(self, windows_of(self.norm2(x)), match, size0)))


def plan(blocks: list[tuple[str, nn.Module, str]], r) -> list[int]:
    """Per-block ``r`` (tokens merged per window) from an int or a per-block list; checked."""
    if isinstance(r, int | float) and not isinstance(r, bool):
        if r < 0 or r != int(r):
            raise PruningError("model", "merge tokens in windows", f"r must be a whole number >= 0, got {r}")
        return [int(r)] * len(blocks)
    if isinstance(r, list | tuple):
        if len(r) != len(blocks):
            raise PruningError("model", "merge tokens in windows",
                               f"{len(r)} per-block r values for {len(blocks)} windowed blocks")
        return [int(v) for v in r]
    raise PruningError("model", "merge tokens in windows",
                       f"r must be an int or a per-block list inside attention windows, got {type(r).__name__}")


def check_local(blocks: list[tuple[str, nn.Module, str]], local: LocalMerge) -> None:
    """Refuse a local stage the windows cannot take (raised before anything changes)."""
    def bad(reason: str) -> PruningError:
        return PruningError("model", "merge tokens locally inside attention windows", reason)
    if local.threshold is not None:
        raise bad("threshold= (ALGM's adaptive count) picks one count per image, but every attention window of "
                  "the batch merges the same count here; pass threshold=None and a count per window")
    if local.window[0] != 1:
        raise bad(f"window {local.window} spans time; an image backbone's window is (1, h, w)")
    if local.layer >= len(blocks):
        raise bad(f"layer {local.layer} is past the last of the {len(blocks)} windowed blocks")
    for name, blk, _ in blocks:
        if blk.window_size == 0:
            continue
        ws = blk.window_size if isinstance(blk.window_size, tuple | list) else (blk.window_size,) * 2
        if local.window[1] > int(ws[0]) or local.window[2] > int(ws[1]):
            raise bad(f"{name}'s attention window {tuple(int(v) for v in ws)} is smaller than the local window "
                      f"{local.window[1:]}")


def merge_in_windows(model: nn.Module, blocks: list[tuple[str, nn.Module, str]], r, prop_attn: bool = True,
                     mlp: bool = True, local: LocalMerge | None = None) -> nn.Module:
    """Patch ``blocks`` of ``model`` (from :func:`windowed_blocks`); called by :func:`prunekit.tokens.merge`
    (``local``: from :func:`prunekit.tokens.merge_dense`)."""
    if local is not None:
        check_local(blocks, local)
    patch_windows(blocks, plan(blocks, r), prop_attn, mlp, local)
    return model
