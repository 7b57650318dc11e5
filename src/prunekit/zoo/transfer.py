"""Weight transfer between ViTs of different patch grids: finer patches, larger canvases, video.

Pure functions on state dicts, used by the training recipes to start a 196-token model from a cheap
49-token one (the route the Foundation issue allows), in the way ImageNet weights start Segmenter
and ViViT. Each uses timm's own resampling (``resample_patch_embed`` = FlexiViT's PI-resize,
``resample_abs_pos_embed``).

>>> from prunekit.zoo.models import vit
>>> src, dst = vit(28, 4, 32, 2, 2, 10), vit(56, 4, 32, 2, 2, 10)   # 49 -> 196 tokens, same patch
>>> _ = transfer_vit(src.state_dict(), dst)
>>> bool((dst.blocks[0].mlp.fc1.weight == src.blocks[0].mlp.fc1.weight).all())
True
"""
from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch import nn

__all__ = ["transfer_vit", "inflate_to_video", "decoder_from_head", "load_adding_heads"]


def _encoder(model: nn.Module) -> tuple[nn.Module, str]:
    enc = getattr(model, "encoder", None)
    return (enc, "encoder.") if enc is not None else (model, "")


def transfer_vit(src_state: dict[str, torch.Tensor], dst: nn.Module, skip: tuple[str, ...] = ("head",)) -> nn.Module:
    """Load a timm ViT state (``src_state``) into ViT ``dst`` whose patch size or grid may differ.

    The patch embedding is PI-resized to ``dst``'s patch, the position embedding is interpolated to
    ``dst``'s grid (prefix tokens kept), keys starting with ``skip`` (the classifier) are left as
    initialised, and blocks ``dst`` lacks are dropped (a shallower encoder takes the first blocks).
    ``src_state`` may be a bare ViT's (loaded into ``dst.encoder`` when ``dst`` wraps one) or one of
    the same wrapper as ``dst`` (a 49-token :class:`~prunekit.zoo.models.SegViT` into a 196-token one).
    """
    enc, prefix = _encoder(dst)
    own = dst.state_dict()
    grid = list(enc.patch_embed.grid_size)
    for key, value in src_state.items():
        if prefix and key.startswith(prefix):  # a state of the same wrapper as dst
            key = key[len(prefix):]
        name = prefix + key if prefix + key in own else key
        if key.startswith(skip) or name not in own:
            continue
        if key == "patch_embed.proj.weight" and value.shape[-2:] != own[name].shape[-2:]:
            value = resample_patch_embed(value, list(own[name].shape[-2:]))
        elif key == "pos_embed" and value.shape != own[name].shape:
            side = int(round((value.shape[1] - enc.num_prefix_tokens) ** 0.5))
            value = resample_abs_pos_embed(value, new_size=grid, old_size=[side, side],
                                           num_prefix_tokens=enc.num_prefix_tokens)
        if value.shape != own[name].shape:
            raise ValueError(f"transfer_vit: {key} has shape {tuple(value.shape)}, target wants "
                             f"{tuple(own[name].shape)}")
        own[name] = value
    dst.load_state_dict(own)
    return dst


def inflate_to_video(image_state: dict[str, torch.Tensor], video: nn.Module, head: bool = True) -> nn.Module:
    """Start a ViViT (:class:`~prunekit.zoo.models.TubeletEmbed`) from an image ViT on the same frame grid.

    The 2-D patch kernel is repeated over the tubelet's frames and divided by their number, so a
    static clip embeds exactly as its frame did; the spatial position embedding is tiled over the time
    steps (time-major token order). Everything else is copied, the classifier too when ``head`` is
    true (same classes: the video model then starts from the frame model's answers, not at chance).
    """
    state = {k: v for k, v in image_state.items() if head or not k.startswith("head")}
    embed = video.patch_embed
    t = embed.proj.kernel_size[0]
    state["patch_embed.proj.weight"] = image_state["patch_embed.proj.weight"].unsqueeze(2).repeat(1, 1, t, 1, 1) / t
    pos = image_state["pos_embed"]
    npt = video.num_prefix_tokens
    steps = embed.num_patches // (pos.shape[1] - npt)
    state["pos_embed"] = torch.cat([pos[:, :npt], pos[:, npt:].repeat(1, steps, 1)], dim=1)
    own = video.state_dict()
    own.update(state)
    video.load_state_dict(own)
    return video


@torch.no_grad()
def decoder_from_head(cls_state: dict[str, torch.Tensor], decoder: nn.Linear) -> nn.Linear:
    """Start a per-patch segmentation decoder from an image classifier's ``head``.

    Row ``1 + c`` of ``decoder`` (label 0 is background) takes class ``c``'s head weights, so a patch
    token of an item scores that item's class from the first step; the background row starts at zero.

    >>> from prunekit.zoo.models import vit
    >>> d = decoder_from_head(vit(28, 4, 32, 1, 2, 10).state_dict(), nn.Linear(32, 11))
    >>> float(d.weight[0].abs().sum()), tuple(d.weight.shape)
    (0.0, (11, 32))
    """
    w, b = cls_state["head.weight"], cls_state["head.bias"]
    if decoder.out_features != w.shape[0] + 1 or decoder.in_features != w.shape[1]:
        raise ValueError(f"decoder_from_head: decoder {decoder.in_features}->{decoder.out_features} does not fit "
                         f"a head {w.shape[1]}->{w.shape[0]} plus a background row")
    decoder.weight.zero_()
    decoder.bias.zero_()
    decoder.weight[1:] = w
    decoder.bias[1:] = b
    return decoder


def load_adding_heads(model: nn.Module, state: dict[str, torch.Tensor], heads: tuple[str, ...]) -> list[str]:
    """Load ``state`` into ``model``, keeping ``model``'s own initialisation of the ``heads`` (key prefixes)
    that ``state`` lacks entirely: heads added to the architecture after the checkpoint was made.

    Returns the keys so kept (empty when ``state`` has every head). A head ``state`` holds only in part,
    any other missing or unexpected key, or a shape that does not fit fails with ``ValueError`` before
    anything is loaded, so ``model`` stays as it was.

    >>> from prunekit.zoo.models import build_segvit
    >>> old = build_segvit(refine=False).state_dict()
    >>> len(load_adding_heads(build_segvit(), old, ("refine.",))) > 0
    True
    """
    own = model.state_dict()
    absent = [k for k in own if k not in state]
    kept = [k for k in absent if k.startswith(heads)]
    partial = [h for h in heads if any(k.startswith(h) for k in kept) and any(k.startswith(h) for k in state)]
    missing = [k for k in absent if not k.startswith(heads)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    if partial or missing or unexpected or shapes:
        raise ValueError(f"load_adding_heads: the state does not fit {type(model).__name__}: heads only in part "
                         f"{partial}, missing {missing[:5]}, unexpected {unexpected[:5]}, shapes {shapes[:5]}")
    model.load_state_dict({**{k: own[k] for k in kept}, **state})
    return kept
