"""Physical removal: new, smaller parameters and buffers, and the module attributes that describe them.

Nothing is modified in place: every pruned tensor is a new ``nn.Parameter`` (or buffer), so a
:class:`Snapshot` of each module's ``__dict__`` (and of shared Hugging Face configs) taken before
surgery restores the model exactly, with the very same parameter objects, if anything fails.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from prunekit.structured.trace import TraceResult

__all__ = ["Snapshot", "apply_keep", "fix_module_attributes"]

_DICTS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


class Snapshot:
    """The structure of a model (module dicts, classes, configs) so it can be restored exactly."""

    def __init__(self, model: nn.Module):
        self.modules = []
        configs = {}
        for m in model.modules():
            d = dict(m.__dict__)
            for key in _DICTS:
                if key in d:
                    d[key] = copy.copy(d[key])
            self.modules.append((m, m.__class__, d))
            cfg = getattr(m, "config", None)
            if cfg is not None and hasattr(cfg, "__dict__") and not isinstance(cfg, (dict, nn.Module)):
                configs[id(cfg)] = (cfg, copy.deepcopy(cfg.__dict__))
        self.configs = list(configs.values())
        self.mha_fastpath = torch.backends.mha.get_fastpath_enabled()

    def restore(self) -> None:
        for m, cls, d in self.modules:  # copies again, so the snapshot survives later surgery
            m.__class__ = cls
            m.__dict__.clear()
            m.__dict__.update({k: copy.copy(v) if k in _DICTS else v for k, v in d.items()})
        for cfg, d in self.configs:
            cfg.__dict__.clear()
            cfg.__dict__.update(copy.deepcopy(d))
        torch.backends.mha.set_fastpath_enabled(self.mha_fastpath)


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, bool]]]:
    """id(tensor) -> every (module, attribute, is_param) that holds it (tied weights appear twice)."""
    out: dict[int, list] = {}
    for m in model.modules():
        for k, p in m._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((m, k, True))
        for k, b in m._buffers.items():
            if b is not None:
                out.setdefault(id(b), []).append((m, k, False))
    return out


def apply_keep(model: nn.Module, trace: TraceResult, keep: dict) -> dict[str, tuple]:
    """Replace every parameter/buffer a pruned group touches; returns ``{name: (old_shape, new_shape)}``."""
    g = trace.graph
    named = dict(model.named_parameters(remove_duplicate=True))
    named.update(dict(model.named_buffers(remove_duplicate=True)))
    owners = _owners(model)
    shapes = {}
    for name, labels in trace.param_labels.items():
        t = named.get(name)
        if t is None or len(labels) != t.dim():
            continue
        idxs = [g.keep_index(lb, keep) for lb in labels]
        if all(i is None for i in idxs):
            continue
        new = t.detach()
        for d, idx in enumerate(idxs):
            if idx is not None:
                new = new.index_select(d, idx.to(new.device))
        new = new.clone()
        for m, k, is_param in owners.get(id(t), []):
            if is_param:
                m._parameters[k] = nn.Parameter(new, requires_grad=t.requires_grad)
                mask = m._buffers.get(f"{k}_mask")  # a sparsity mask (prunekit.sparse.masking) is cut the same way
                if mask is not None and mask.shape == t.shape:
                    for d, idx in enumerate(idxs):
                        if idx is not None:
                            mask = mask.index_select(d, idx.to(mask.device))
                    m._buffers[f"{k}_mask"] = mask.clone()
            else:
                m._buffers[k] = new
        # tied weights: the same new Parameter object for all holders
        holders = owners.get(id(t), [])
        if len(holders) > 1 and holders[0][2]:
            shared = holders[0][0]._parameters[holders[0][1]]
            for m, k, _ in holders[1:]:
                m._parameters[k] = shared
        shapes[name] = (tuple(t.shape), tuple(new.shape))
    return shapes


def _weight(m: nn.Module) -> torch.Tensor | None:
    w = m._parameters.get("weight")
    return w if isinstance(w, torch.Tensor) else None


def _torchvision_vit(m: nn.Module) -> None:
    m.hidden_dim = m.conv_proj.weight.shape[0]  # read by _process_input's reshape


def _timm_metaformer_scale(m: nn.Module) -> None:
    m.shape = (m.scale.shape[0], *m.shape[1:])  # forward: x * self.scale.view(self.shape)


def _timm_blur_pool(m: nn.Module) -> None:
    if m.channels is not None:  # forward: conv2d(x, self.filt, groups=self.channels)
        m.channels = m.filt.shape[0]


def _timm_mixed_conv(m: nn.Module) -> None:
    m.splits = [c.in_channels for c in m.values()]  # forward: torch.split(x, self.splits, 1)
    m.in_channels, m.out_channels = sum(m.splits), sum(c.out_channels for c in m.values())


def _timm_csp_stage(m: nn.Module) -> None:
    # forward: x.split(self.expand_chs // 2) of conv_exp's output, which the tracer pruned in equal halves
    m.expand_chs = m.conv_exp.conv.weight.shape[0]


def _timm_res2net(m: nn.Module) -> None:
    # forward: torch.split(out, self.width, 1) into equal pieces, the first ones read by self.convs (always >= 1)
    m.width = m.convs[0].in_channels


def _timm_selective_kernel(m: nn.Module) -> None:
    # forward: torch.split(x, self.in_channels // self.num_paths, 1), one equal piece per path
    first = next(c for c in m.paths[0].modules() if isinstance(c, nn.Conv2d))
    m.in_channels = first.in_channels * m.num_paths if m.split_input else first.in_channels
    m.out_channels = first.out_channels


def _timm_rel_pos_attention(m: nn.Module) -> None:
    # BottleneckAttn / HaloAttn: split and reshape by self.dim_out_qk, dim_head_qk, dim_head_v, dim_out_v;
    # heads stay (their count is a literal of the reshape), the head widths follow the pruned projections
    m.dim_head_qk = m.pos_embed.dim_head = m.pos_embed.height_rel.shape[-1]
    m.dim_out_qk = m.num_heads * m.dim_head_qk
    total = m.qkv.out_channels if hasattr(m, "qkv") else m.q.out_channels + m.kv.out_channels
    m.dim_out_v = total - 2 * m.dim_out_qk
    m.dim_head_v = m.dim_out_v // m.num_heads


def _timm_hsmssd(m: nn.Module) -> None:
    # EfficientViM's mixer: split(BCdt, [state_dim] * 3) with A of state_dim, split(hz, [d_inner] * 2)
    m.state_dim = m.A.shape[0]
    m.d_inner = m.out_proj.conv.in_channels


def _timm_efficientformerv2_attention(m: nn.Module) -> None:
    # Attention2d(Downsample): reshape(B, self.dh, H, W) of attn @ v; heads stay (a literal of the reshapes)
    m.dh = m.v.conv.out_channels
    m.d, m.key_dim = m.dh // m.num_heads, m.k.conv.out_channels // m.num_heads


# Modules whose forward reads a width from an attribute that is not a standard layer's.
CLASS_FIXUPS = {"torchvision.models.vision_transformer.VisionTransformer": _torchvision_vit,
                "timm.models.metaformer.Scale": _timm_metaformer_scale,
                "timm.models.cspnet.CrossStage": _timm_csp_stage,
                "timm.models.cspnet.CrossStage3": _timm_csp_stage,
                "timm.layers.blur_pool.BlurPool2d": _timm_blur_pool,
                "timm.layers.mixed_conv2d.MixedConv2d": _timm_mixed_conv,
                "timm.models.res2net.Bottle2neck": _timm_res2net,
                "timm.models.dla.DlaBottle2neck": _timm_res2net,
                "timm.layers.selective_kernel.SelectiveKernel": _timm_selective_kernel,
                "timm.layers.bottleneck_attn.BottleneckAttn": _timm_rel_pos_attention,
                "timm.layers.halo_attn.HaloAttn": _timm_rel_pos_attention,
                "timm.models.efficientvim.HSMSSD": _timm_hsmssd,
                "timm.models.efficientformer_v2.Attention2d": _timm_efficientformerv2_attention,
                "timm.models.efficientformer_v2.Attention2dDownsample": _timm_efficientformerv2_attention}


def fix_module_attributes(model: nn.Module, trace: TraceResult, keep: dict, shapes: dict[str, tuple]) -> None:
    """Update in/out sizes, groups and normalised shapes of standard layers after ``apply_keep``."""
    g = trace.graph
    touched = {name.rsplit(".", 1)[0] if "." in name else "" for name in shapes}
    ln_shapes: dict[str, Any] = {}
    for mod, op, info in trace.module_ops:
        if op == "layer_norm":
            ln_shapes[mod] = tuple(g.kept_size(lb, keep) for lb in info)
    fixups = []  # run after every standard layer is updated: they read the layers' new sizes
    for path, m in model.named_modules():
        w = _weight(m)
        if path in ln_shapes and hasattr(m, "normalized_shape"):
            new = ln_shapes[path]
            if tuple(m.normalized_shape) != new:
                m.normalized_shape = new if isinstance(m.normalized_shape, tuple) else list(new)
        cls = getattr(type(m), "_width_free_base", type(m))
        fixup = CLASS_FIXUPS.get(f"{cls.__module__}.{cls.__qualname__}")
        if fixup is not None:
            fixups.append((fixup, m))
        if path not in touched:
            continue
        old_w = shapes.get(f"{path}.weight" if path else "weight", (None, None))[0]
        if isinstance(m, nn.Linear) and w is not None:
            m.in_features, m.out_features = w.shape[1], w.shape[0]
        elif isinstance(m, nn.modules.conv._ConvNd) and w is not None:
            old_groups = m.groups
            if m.transposed:
                old_in = old_w[0] if old_w else m.in_channels
                m.in_channels = w.shape[0]
                m.groups = max(1, m.in_channels // max(1, old_in // old_groups)) if old_groups > 1 else 1
                m.out_channels = w.shape[1] * m.groups
            else:
                old_out = old_w[0] if old_w else m.out_channels
                m.out_channels = w.shape[0]
                m.groups = max(1, m.out_channels // max(1, old_out // old_groups)) if old_groups > 1 else 1
                m.in_channels = w.shape[1] * m.groups
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            ref = w if w is not None else m._buffers.get("running_mean")
            if ref is not None:
                m.num_features = ref.shape[0]
        elif isinstance(m, nn.GroupNorm) and w is not None:
            old_c = old_w[0] if old_w else m.num_channels
            m.num_groups = max(1, w.shape[0] // max(1, old_c // m.num_groups))
            m.num_channels = w.shape[0]
        elif isinstance(m, nn.Embedding) and w is not None:
            m.num_embeddings, m.embedding_dim = w.shape
        elif isinstance(m, nn.PReLU) and w is not None:
            m.num_parameters = w.shape[0]
        elif type(m).__name__ == "Conv1D" and w is not None and hasattr(m, "nf"):  # Hugging Face GPT-2
            m.nx, m.nf = w.shape
        if w is not None and hasattr(m, "normalized_shape") and path not in ln_shapes:
            ns = m.normalized_shape
            if isinstance(ns, (tuple, list)) and len(ns) == w.dim():
                m.normalized_shape = tuple(w.shape) if isinstance(ns, tuple) else list(w.shape)
            elif isinstance(ns, int):
                m.normalized_shape = w.shape[-1]
    for fixup, m in fixups:
        fixup(m)


def sync_model_attributes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Keep a timm model's width attributes true after a cut, so ``reset_classifier`` builds a head that fits.

    ``num_features`` (and ``head_hidden_size`` where there is no pre-logits layer) follow the Linear
    head's input width; ``embed_dim`` follows the token width (``cls_token`` / ``pos_embed``).
    Returns ``{attribute: (old, new)}`` for what changed.
    """
    changed: dict[str, tuple[int, int]] = {}

    def put(name: str, value: int) -> None:
        old = getattr(model, name, None)
        if isinstance(old, int) and old != value:
            setattr(model, name, value)
            changed[name] = (old, value)
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Linear):
        plain = getattr(model, "head_hidden_size", None) in (None, getattr(model, "num_features", None))
        if plain:
            put("num_features", head.in_features)
            put("head_hidden_size", head.in_features)
    for path, m in model.named_modules():  # timm's classifier heads keep their own widths
        fc = getattr(m, "fc", None)
        if m is not model and isinstance(fc, nn.Linear) and isinstance(getattr(m, "in_features", None), int) \
                and not getattr(m, "hidden_size", None) and m.in_features != fc.in_features:
            changed[f"{path}.in_features"] = (m.in_features, fc.in_features)
            m.in_features = fc.in_features
            if isinstance(getattr(m, "num_features", None), int):
                m.num_features = fc.in_features
    for token in ("cls_token", "pos_embed", "reg_token"):
        t = getattr(model, token, None)
        if isinstance(t, torch.Tensor) and t.dim() >= 2:
            put("embed_dim", int(t.shape[-1]))
            break
    return changed
