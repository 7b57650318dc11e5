"""mosaic-det's detector: a timm ViT encoder, a ViTDet-style simple feature pyramid, a CenterNet head.

- **Encoder**: a plain timm ``VisionTransformer`` on the 112 px grey canvas at patch 8, so 196 patch
  tokens (what ToMe and :func:`prunekit.tokens.merge_dense` act on; merged tokens are un-merged to
  the full 14 x 14 grid before the neck, so the neck and head run unchanged).
- **Neck** (ViTDet's simple feature pyramid, one level): the last token map, upsampled 2x by a
  transposed conv to stride 4 (28 x 28), then a 3x3 conv.
- **Head** (CenterNet, Zhou et al. 2019): per class a centre heat map, plus the box size and the
  sub-cell offset of the centre. ``forward`` returns the raw maps as one tensor ``(B, classes + 4, 28,
  28)`` (heat-map logits, then w, h in cells, then the x, y offset), so FLOP counting, export and
  merging see an ordinary model; :func:`decode` turns it into boxes.

>>> import torch
>>> m = build_detvit().eval()
>>> out = m(torch.randn(2, 1, 112, 112))
>>> out.shape
torch.Size([2, 14, 28, 28])
>>> [sorted(d) for d in decode(out, k=5)][0], decode(out, k=5)[0]["boxes"].shape
(['boxes', 'labels', 'scores'], torch.Size([5, 4]))
"""
from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["DetViT", "build_detvit", "centernet_targets", "centernet_ignore", "centernet_loss", "decode", "STRIDE",
           "NUM_CLASSES"]

STRIDE = 4          # output cells per px: 112 px -> 28 x 28
NUM_CLASSES = 10
HEAT_PRIOR = 0.1    # the heat maps start at this probability (CenterNet's bias init, -2.19)


class DetViT(nn.Module):
    """Encoder tokens -> stride-4 feature map -> CenterNet maps ``(B, classes + 4, H/4, W/4)``."""

    def __init__(self, encoder: VisionTransformer, num_classes: int = NUM_CLASSES, neck: int = 64):
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        c = encoder.embed_dim
        up = encoder.patch_embed.patch_size[0] // STRIDE
        self.neck = nn.Sequential(nn.ConvTranspose2d(c, neck, up, stride=up), nn.BatchNorm2d(neck), nn.GELU(),
                                  nn.Conv2d(neck, neck, 3, padding=1), nn.BatchNorm2d(neck), nn.GELU())
        self.heat = nn.Sequential(nn.Conv2d(neck, neck, 3, padding=1), nn.GELU(), nn.Conv2d(neck, num_classes, 1))
        self.box = nn.Sequential(nn.Conv2d(neck, neck, 3, padding=1), nn.GELU(), nn.Conv2d(neck, 4, 1))
        with torch.no_grad():
            self.heat[-1].bias.fill_(-math.log((1 - HEAT_PRIOR) / HEAT_PRIOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        tokens = enc.forward_features(x)[:, enc.num_prefix_tokens:]
        grid = enc.patch_embed.grid_size
        fmap = self.neck(tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid))
        return torch.cat([self.heat(fmap), self.box(fmap)], dim=1)


def build_detvit() -> DetViT:
    """mosaic-det: 112 px grey canvas, patch 8 -> 196 tokens, 8 blocks, width 96, 4 heads, 10 classes."""
    enc = VisionTransformer(img_size=112, patch_size=8, in_chans=1, num_classes=0, embed_dim=96, depth=8,
                            num_heads=4, mlp_ratio=4.0, global_pool="")
    return DetViT(enc)


def centernet_targets(targets: list[dict], size: int, num_classes: int = NUM_CLASSES
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training targets from per-image ``{"boxes" xyxy px, "labels"}``: ``heat (B, classes, S, S)`` (an
    elliptic Gaussian per object, TTFNet's sigma = 0.54 * side / 6, peak 1 at the centre cell),
    ``box (B, 4, S, S)`` (w, h in cells, x, y offset of the centre in its cell) and ``mask (B, S, S)``
    (1 at each object's centre cell), with ``S = size // STRIDE``. Objects flagged in an optional
    ``"ignore"`` (K,) bool are left out (see :func:`centernet_ignore`)."""
    s = size // STRIDE
    b = len(targets)
    heat = torch.zeros(b, num_classes, s, s)
    box = torch.zeros(b, 4, s, s)
    mask = torch.zeros(b, s, s)
    ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32),
                            indexing="ij")
    for i, t in enumerate(targets):
        order = torch.argsort((t["boxes"][:, 2] - t["boxes"][:, 0]) * (t["boxes"][:, 3] - t["boxes"][:, 1]),
                              descending=True)  # small objects last: their centre cell wins a tie
        skip = t.get("ignore")
        for j in order.tolist():
            if skip is not None and bool(skip[j]):
                continue
            x0, y0, x1, y1 = (t["boxes"][j] / STRIDE).tolist()
            w, h = x1 - x0, y1 - y0
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            ix, iy = min(int(cx), s - 1), min(int(cy), s - 1)
            sx, sy = max(0.54 * w / 6, 0.3), max(0.54 * h / 6, 0.3)
            g = torch.exp(-((xs - ix) ** 2 / (2 * sx ** 2) + (ys - iy) ** 2 / (2 * sy ** 2)))
            c = int(t["labels"][j])
            heat[i, c] = torch.maximum(heat[i, c], g)
            box[i, :, iy, ix] = torch.tensor([w, h, cx - ix, cy - iy])
            mask[i, iy, ix] = 1.0
    return heat, box, mask


def centernet_ignore(targets: list[dict], size: int, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """``(B, classes, S, S)``: 1 on the cells that an object flagged ``"ignore"`` covers, in its class's
    map, else 0. The metric neither rewards nor penalises a detection of such an object (too little of
    it is visible), so :func:`centernet_loss` does not push the heat map down there either.

    >>> t = [{"boxes": torch.tensor([[0., 0., 8., 12.]]), "labels": torch.tensor([2]), "ignore": torch.tensor([True])}]
    >>> m = centernet_ignore(t, 16)
    >>> m.shape, m[0, 2].sum().item(), m.sum().item()   # 2 x 3 cells of class 2
    (torch.Size([1, 10, 4, 4]), 6.0, 6.0)
    """
    s = size // STRIDE
    out = torch.zeros(len(targets), num_classes, s, s)
    for i, t in enumerate(targets):
        flags = t.get("ignore")
        if flags is None:
            continue
        for j in flags.nonzero()[:, 0].tolist():
            x0, y0, x1, y1 = (t["boxes"][j] / STRIDE).tolist()
            c = int(t["labels"][j])
            out[i, c, max(0, math.floor(y0)):min(s, math.ceil(y1)), max(0, math.floor(x0)):min(s, math.ceil(x1))] = 1.0
    return out


def centernet_loss(out: torch.Tensor, heat: torch.Tensor, box: torch.Tensor, mask: torch.Tensor,
                   size_weight: float = 0.1, ignore: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """CenterNet's penalty-reduced focal loss on the heat maps (alpha 2, beta 4) plus L1 on size
    (weighted ``size_weight``) and offset at the centre cells, each normalised by the object count.
    ``ignore`` (:func:`centernet_ignore`): cells where the heat map is not penalised as a negative."""
    c = heat.shape[1]
    logits, pred = out[:, :c], out[:, c:]
    pos = heat.eq(1).float()
    p = logits.sigmoid()
    log_p, log_1p = nn.functional.logsigmoid(logits), nn.functional.logsigmoid(-logits)
    neg = (1 - pos) if ignore is None else (1 - pos) * (1 - ignore)
    focal = -(pos * (1 - p) ** 2 * log_p + neg * (1 - heat) ** 4 * p ** 2 * log_1p).sum()
    n = mask.sum().clamp_min(1.0)
    m = mask[:, None]
    size = ((pred[:, :2] - box[:, :2]).abs() * m).sum() / n
    offset = ((pred[:, 2:] - box[:, 2:]).abs() * m).sum() / n
    heat_loss = focal / pos.sum().clamp_min(1.0)
    loss = heat_loss + size_weight * size + offset
    return loss, {"loss": float(loss.detach()), "heat": float(heat_loss.detach()), "size": float(size.detach()),
                  "offset": float(offset.detach())}


@torch.no_grad()
def decode(out: torch.Tensor, k: int = 100, num_classes: int = NUM_CLASSES) -> list[dict]:
    """Boxes from raw maps: peaks of the heat maps (a 3x3 max-pool keeps local maxima, CenterNet's NMS),
    the top ``k`` per image, each a box ``(cx +- w/2, cy +- h/2) * STRIDE`` in px."""
    heat = out[:, :num_classes].float().sigmoid()
    peaks = heat * (nn.functional.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    b, c, s, _ = heat.shape
    scores, idx = peaks.flatten(1).topk(min(k, c * s * s))
    labels = idx // (s * s)
    cell = idx % (s * s)
    iy, ix = (cell // s).float(), (cell % s).float()
    pred = out[:, num_classes:].float().flatten(2)  # (B, 4, S*S)
    take = cell[:, None, :].expand(-1, 4, -1)
    w, h, ox, oy = pred.gather(2, take).unbind(1)
    w, h = w.clamp_min(0), h.clamp_min(0)  # sizes are supervised only at centres: never a negative box
    cx, cy = ix + ox, iy + oy
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1) * STRIDE
    return [{"boxes": boxes[i], "scores": scores[i], "labels": labels[i]} for i in range(b)]
