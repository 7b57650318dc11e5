"""Architectures of the reference models, built from timm's own classes where a ViT is involved.

Every ViT here sees 196 patch tokens, as ViT-B/16 does at 224 px, so per-layer token-reduction
schedules transfer to real models.

>>> m = build("fmnist-vit")
>>> m.patch_embed.num_patches, len(m.blocks), m.embed_dim
(196, 12, 96)
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from prunekit.zoo.entries import ENTRIES, ZooLookupError, entry

__all__ = ["ResNetFM", "PixelRefine", "SegViT", "TubeletEmbed", "vit", "build", "BUILDERS"]


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a residual add (a 1x1 conv-BN shortcut when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetFM(nn.Module):
    """A small ResNet for 28x28 grey images: stem, three stages of two blocks, pool, classifier."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class TubeletEmbed(PatchEmbed):
    """Video tubelet embedding (ViViT): a Conv3d over (time, height, width) tubelets, flattened to tokens.

    Takes ``(B, C, T, H, W)`` and returns ``(B, T/t * H/p * W/p, D)``; drop-in ``embed_layer`` for timm's
    VisionTransformer, so the transformer itself stays timm's.
    """

    frames: int = 8
    tubelet: int = 2

    def __init__(self, img_size=56, patch_size=8, in_chans=1, embed_dim=64, bias=True, **kwargs):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                         embed_dim=embed_dim, bias=bias)
        t = self.frames // self.tubelet
        self.proj = nn.Conv3d(in_chans, embed_dim, (self.tubelet, *self.patch_size),
                              (self.tubelet, *self.patch_size), bias=bias)
        self.grid_size = (t * self.grid_size[0], self.grid_size[1])  # time folded into rows
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class PixelRefine(nn.Module):
    """Sharpens upsampled patch logits with full-resolution evidence from the image (a light skip decoder).

    A patch token covers 4x4 px, so bilinear upsampling of patch logits cannot follow a garment's
    silhouette inside a patch. This head sees the image itself (two 3x3 convs), the upsampled logits
    and a projection of the tokens, and adds a per-pixel correction; its last conv starts at zero, so
    a model given this head computes exactly what it did without it.

    >>> r = PixelRefine(96, 11)
    >>> r(torch.randn(2, 196, 96), (14, 14), torch.randn(2, 11, 56, 56), torch.randn(2, 1, 56, 56)).abs().max()
    tensor(0., grad_fn=<MaxBackward1>)
    """

    def __init__(self, embed_dim: int, num_classes: int, in_chans: int = 1, image_dim: int = 8,
                 hidden: int = 16):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(in_chans, image_dim, 3, 1, 1), nn.ReLU(),
                                   nn.Conv2d(image_dim, image_dim, 3, 1, 1), nn.ReLU())
        self.proj = nn.Linear(embed_dim, image_dim)
        self.fuse = nn.Sequential(nn.Conv2d(num_classes + 2 * image_dim, hidden, 3, 1, 1), nn.ReLU(),
                                  nn.Conv2d(hidden, num_classes, 3, 1, 1))
        nn.init.zeros_(self.fuse[-1].weight)
        nn.init.zeros_(self.fuse[-1].bias)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int], logits: torch.Tensor,
                image: torch.Tensor) -> torch.Tensor:
        """The correction to add to ``logits`` ``(B, K, H, W)``, from patch ``tokens`` ``(B, N, D)`` on ``grid``."""
        feat = self.proj(tokens).transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
        feat = nn.functional.interpolate(feat, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([logits, feat, self.image(image)], 1))


class SegViT(nn.Module):
    """Segmenter-style segmentation: a timm ViT encoder, a linear decoder per patch, bilinear upsampling.

    ``refine``: add a :class:`PixelRefine` head, which corrects the upsampled logits from the image
    at full resolution (mosaic-segvit has one; ``refine=False`` is Segmenter's plain linear decoder).
    """

    def __init__(self, encoder: VisionTransformer, num_classes: int, refine: bool = False):
        super().__init__()
        self.encoder = encoder
        self.decoder = nn.Linear(encoder.embed_dim, num_classes)
        self.refine = PixelRefine(encoder.embed_dim, num_classes, encoder.patch_embed.proj.in_channels) \
            if refine else None

    def get_classifier(self) -> nn.Module:
        return self.decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = self.encoder.forward_features(x)[:, self.encoder.num_prefix_tokens:]
        grid = self.encoder.patch_embed.grid_size
        logits = self.decoder(tokens).transpose(1, 2).reshape(x.shape[0], -1, *grid)
        logits = nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        refine = getattr(self, "refine", None)  # SegViTs pickled before the head existed have no attribute
        return logits if refine is None else logits + refine(tokens, grid, logits, x)


def vit(img_size: int, patch: int, width: int, depth: int, heads: int, classes: int, **kw) -> VisionTransformer:
    """A grey-image timm ``VisionTransformer`` (MLP ratio 4), the family every zoo ViT belongs to."""
    return VisionTransformer(img_size=img_size, patch_size=patch, in_chans=1, num_classes=classes,
                             embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=4.0, **kw)


def build_resnet() -> nn.Module:
    return ResNetFM()


def build_vit(patch: int = 2) -> VisionTransformer:
    """fmnist-vit: 28 px, patch 2 -> 196 tokens, 12 blocks, width 96, 4 heads (patch 4 = 49-token pretraining)."""
    return vit(28, patch, 96, 12, 4, 10)


def build_segvit(patch: int = 4, canvas: int = 56, refine: bool = True) -> SegViT:
    """mosaic-segvit: 56 px canvas, patch 4 -> 196 tokens, 8 blocks, width 96, 4 heads (28 px: 49-token crops).

    ``refine``: with the :class:`PixelRefine` head (the shipped model has it).
    """
    return SegViT(vit(canvas, patch, 96, 8, 4, 0, global_pool=""), 11, refine)


def build_vivit() -> VisionTransformer:
    """motion-vivit: 8x56x56 clips, 2x8x8 tubelets -> 196 tokens, joint space-time attention, 8 blocks."""
    return vit(56, 8, 64, 8, 4, 10, embed_layer=TubeletEmbed)


# the builder of each zoo model that has one (a view of its ZooEntry; minilm has published weights instead)
BUILDERS: dict[str, Callable[[], nn.Module]] = {name: e.builder for name, e in ENTRIES.items() if e.builder}


def build(name: str) -> nn.Module:
    """A freshly initialised model of zoo architecture ``name`` (its :class:`~prunekit.zoo.ZooEntry`'s builder)."""
    e = entry(name)
    if e.builder is None:
        raise ZooLookupError(name, "build the zoo model", f"it has published weights only; load it with "
                           f"prunekit.zoo.load({name!r}) (built here: {', '.join(BUILDERS)})")
    return e.builder()
