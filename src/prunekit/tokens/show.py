"""Which patches merged into which token, drawn over the input image.

After the visualisations of ToMe (Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023):
every final token is painted with the mean colour of the patches it stands for, and the borders
between tokens are outlined. For saliency-aware video merging (vid-TLDR, Choi et al., CVPR 2024;
:mod:`prunekit.tokens.saliency`), :func:`draw_video_saliency` draws a strip of the clip's frames with the
tokens kept out of the early merging and the saliency heat map, so a user sees what was called background.

>>> import timm, torch
>>> vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=4).eval()
>>> labels = merge_groups(vit, torch.randn(3, 64, 64), r=4)
>>> labels.shape, int(labels.unique().numel())   # 16 patches; r clipped to 4, 4, 4, 2 -> 2 tokens
(torch.Size([4, 4]), 2)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunekit.tokens.merge import is_patched, last_info, merge, unpatch
from prunekit.tokens.schedule import RSpec

__all__ = ["merge_groups", "patch_grid", "group_image", "draw_merges", "VideoSaliency", "video_saliency",
           "draw_video_saliency"]


def patch_grid(model: nn.Module) -> tuple[int, int]:
    """``(rows, cols)`` of the patch grid of a timm or Hugging Face ViT."""
    for m in model.modules():
        grid = getattr(getattr(m, "patch_embed", None), "grid_size", None)
        if grid is not None:
            return int(grid[0]), int(grid[1])
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "image_size") and hasattr(cfg, "patch_size"):
            size = cfg.image_size if isinstance(cfg.image_size, (tuple, list)) else (cfg.image_size,) * 2
            patch = cfg.patch_size if isinstance(cfg.patch_size, (tuple, list)) else (cfg.patch_size,) * 2
            return size[0] // patch[0], size[1] // patch[1]
    raise ValueError(f"cannot find the patch grid of {type(model).__name__}")


@torch.no_grad()
def merge_groups(model: nn.Module, image: torch.Tensor, r: RSpec, **merge_kwargs) -> torch.Tensor:
    """Final token index of every patch ``(rows, cols)`` for ``image`` ``(C, H, W)`` merged with ``r``.

    The model is patched for the call and left as it was (patched or not) afterwards.
    """
    was_patched = is_patched(model)
    if was_patched:
        raise ValueError("merge_groups patches the model itself; unpatch it first")
    try:
        merge(model, r, trace_source=True, **merge_kwargs)
        x = image[None]
        model(x) if not _is_hf(model) else model(pixel_values=x)
        info = last_info(model)
    finally:
        unpatch(model)
    rows, cols = patch_grid(model)
    p = info.num_protected
    if info.positions is None:  # nothing merged
        return torch.arange(rows * cols).view(rows, cols)
    labels = info.positions[0, p:] - p
    return labels.view(rows, cols)


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model.config, "model_type")


def group_image(image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``image`` ``(C, H, W)`` with every patch replaced by the mean colour of its token's patches."""
    C, H, W = image.shape
    rows, cols = labels.shape
    ph, pw = H // rows, W // cols
    patches = image[:, :rows * ph, :cols * pw].reshape(C, rows, ph, cols, pw).permute(1, 3, 0, 2, 4)
    means = patches.mean(dim=(-1, -2)).reshape(rows * cols, C)
    flat = labels.flatten()
    n = int(flat.max()) + 1
    sums = torch.zeros(n, C).index_add_(0, flat, means)
    counts = torch.bincount(flat, minlength=n).clamp_min(1)[:, None]
    colour = (sums / counts)[flat].view(rows, cols, C).permute(2, 0, 1)
    return colour.repeat_interleave(ph, 1).repeat_interleave(pw, 2)


BOX_COLOURS = {"truth": "#22cc44", "predicted": "#ffcc00"}


def draw_merges(image: torch.Tensor, labels: torch.Tensor, out: str | Path, title: str = "",
                boxes: dict[str, torch.Tensor] | None = None) -> Path:
    """Save a PNG: the input image, and the merged tokens (mean colour, outlined) over it.

    ``boxes``: for a detector, ``{"truth": (K, 4), "predicted": (M, 4)}`` boxes ``(x0, y0, x1, y1)`` in
    input pixels, drawn on both panels (ground truth green, predictions yellow and dashed), so a user
    sees whether merged regions cross object boundaries."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = image.detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-8)
    scale = max(1, 256 // max(img.shape[1:]))  # upsample small images so outlines stay thin
    img = img.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    merged = group_image(img, labels)
    rows, cols = labels.shape
    H, W = img.shape[1:]
    up = labels.repeat_interleave(H // rows, 0).repeat_interleave(W // cols, 1)
    edge = torch.zeros_like(up, dtype=torch.bool)
    edge[1:] |= up[1:] != up[:-1]
    edge[:, 1:] |= up[:, 1:] != up[:, :-1]
    to_hwc = (lambda t: t[0].numpy()) if img.shape[0] == 1 else (lambda t: t.permute(1, 2, 0).numpy())
    cmap = "gray" if img.shape[0] == 1 else None
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    axes[0].imshow(to_hwc(img), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title("input")
    axes[1].imshow(to_hwc(merged), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    overlay = torch.zeros(H, W, 4)
    overlay[edge] = torch.tensor([1.0, 0.2, 0.1, 1.0])
    axes[1].imshow(overlay.numpy(), interpolation="nearest")
    axes[1].set_title(f"{int(labels.unique().numel())} tokens from {rows * cols} patches")
    for ax in axes:
        ax.set_axis_off()
        for kind, kboxes in (boxes or {}).items():
            for x0, y0, x1, y1 in (kboxes.detach().float().cpu() * scale).tolist():
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, linewidth=1.2,
                                           edgecolor=BOX_COLOURS.get(kind, "#00aaff"),
                                           linestyle="--" if kind == "predicted" else "-"))
    if boxes:
        counts = ", ".join(f"{len(b)} {k}" for k, b in boxes.items())
        title = f"{title} ({counts} boxes)" if title else f"{counts} boxes"
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


@dataclass
class VideoSaliency:
    """What one clip's saliency-aware merge did, on the ``(T, H, W)`` token grid: ``saliency`` (the score of
    each token), ``kept`` (the tokens kept out of the early merging) and ``unmerged`` (the tokens that
    are still alone, one original token each, after the last block)."""

    saliency: torch.Tensor
    kept: torch.Tensor
    unmerged: torch.Tensor


@torch.no_grad()
def video_saliency(model: nn.Module, clip: torch.Tensor, r: RSpec = 0, **merge_kwargs) -> VideoSaliency:
    """Merge ``clip`` ``(C, F, H, W)`` through ``model`` with :func:`prunekit.tokens.merge_video`
    ``(method="saliency", r=r, **merge_kwargs)`` and read back what it did. The model is patched for the
    call and unpatched afterwards.

    >>> from prunekit.zoo.models import build
    >>> vivit = build("motion-vivit").eval()
    >>> shown = video_saliency(vivit, torch.randn(1, 8, 56, 56), keep=0.3)
    >>> shown.saliency.shape, int(shown.kept.sum())      # 4 x 7 x 7 tokens, 59 of 196 kept out
    (torch.Size([4, 7, 7]), 59)
    """
    from prunekit.tokens.adapters.timm import token_grid
    from prunekit.tokens.saliency import SaliencyMerge, salient_order
    from prunekit.tokens.video import merge_video
    if is_patched(model):
        raise ValueError("video_saliency patches the model itself; unpatch it first")
    try:
        merge_video(model, r=r, method="saliency", trace_source=True, **merge_kwargs)
        model(clip[None])
        info = last_info(model)
    finally:
        unpatch(model)
    if info.saliency is None:
        raise ValueError("nothing was merged early (background_r=0?), so no token was scored")
    grid = next(token_grid(m) for m in model.modules() if hasattr(m, "patch_embed"))
    p, n = info.num_protected, info.saliency.shape[1]
    keep = merge_kwargs.get("keep")
    count = SaliencyMerge(keep=SaliencyMerge.keep if keep is None else keep).kept(n, p)
    kept = torch.zeros(n, dtype=torch.bool)
    kept[salient_order(info.saliency, count, p)[0, p:p + count]] = True
    if info.positions is None:
        unmerged = torch.ones(n, dtype=torch.bool)
    else:
        unmerged = info.size[0, info.positions[0], 0] == 1
    return VideoSaliency(info.saliency[0, p:].view(grid), kept[p:].view(grid), unmerged[p:].view(grid))


def draw_video_saliency(clip: torch.Tensor, shown: VideoSaliency, out: str | Path, title: str = "") -> Path:
    """Save a PNG strip, one column per time slice of tokens (its first frame): the frame with the tokens
    kept out of the early merging outlined and the merged ones dimmed, and the saliency heat map over it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = clip.detach().float().cpu()[0]               # (F, H, W): the first channel
    frames = (frames - frames.min()) / (frames.max() - frames.min()).clamp_min(1e-8)
    T, rows, cols = shown.saliency.shape
    step = frames.shape[0] // T
    H, W = frames.shape[1:]
    scale = max(1, 128 // max(H, W))
    heat = shown.saliency.float()
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
    fig, axes = plt.subplots(2, T, figsize=(1.9 * T, 4.0), squeeze=False)
    for t in range(T):
        img = frames[t * step].repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        size = (img.shape[0] // rows, img.shape[1] // cols)
        dim = torch.where(_upsample(shown.unmerged[t], size), 1.0, 0.35)
        kept = _upsample(shown.kept[t], size)
        edge = torch.zeros_like(kept)
        edge[1:] |= kept[1:] != kept[:-1]
        edge[:, 1:] |= kept[:, 1:] != kept[:, :-1]
        rgb = (img * dim)[..., None].expand(-1, -1, 3).clone()
        rgb[edge] = torch.tensor([1.0, 0.15, 0.1])
        axes[0, t].imshow(rgb.numpy(), interpolation="nearest")
        axes[0, t].set_title(f"frames {t * step}-{t * step + step - 1}", fontsize=8)
        axes[1, t].imshow(img.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[1, t].imshow(_upsample(heat[t], size).numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1,
                          interpolation="nearest")
    axes[0, 0].set_ylabel("kept (red), merged (dim)", fontsize=8)
    axes[1, 0].set_ylabel("saliency", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _upsample(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each entry of a ``(rows, cols)`` grid repeated over a ``size`` block of pixels."""
    return grid.repeat_interleave(size[0], 0).repeat_interleave(size[1], 1)
