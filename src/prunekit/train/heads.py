"""Give a classifier as many outputs as the data has classes, the way its library does it.

- timm models: ``reset_classifier(n)``, after setting ``num_features`` to the head's real input
  width (a pruned backbone has fewer features than timm's attribute still says);
- Hugging Face models with ``config.num_labels``: a new ``classifier`` / ``score`` Linear and
  ``config.num_labels = n``;
- anything else: the last ``nn.Linear`` in the model (torchvision's ``fc`` / ``classifier[-1]`` /
  ``heads.head``).

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> match_head(net, 5), net(torch.randn(2, 4)).shape
('replaced the head: 3 -> 5 classes (last Linear, 2)', torch.Size([2, 5]))
>>> match_head(net, 5) is None
True
"""
from __future__ import annotations

from torch import nn

from prunekit.errors import PruningError

__all__ = ["head_of", "match_head"]


def head_of(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """``(name, Linear)`` of ``model``'s classification head, or ``None`` when there is no Linear head."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Linear):
            name = next(n for n, m in model.named_modules() if m is head)
            return name, head
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_labels"):
        for name in ("classifier", "score"):
            mod = getattr(model, name, None)
            if isinstance(mod, nn.Linear):
                return name, mod
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def match_head(model: nn.Module, classes: int) -> str | None:
    """Replace ``model``'s head by a fresh one with ``classes`` outputs unless it has that many already.

    Returns what was done (for the CLI's output), or ``None`` when nothing changed."""
    found = head_of(model)
    if found is None:
        raise PruningError(type(model).__name__, "replace the head", "no nn.Linear classification head found; "
                           "give data with as many classes as the model has outputs")
    name, head = found
    if head.out_features == classes:
        return None
    old = head.out_features
    device, dtype = head.weight.device, head.weight.dtype
    if hasattr(model, "reset_classifier") and getattr(model, "get_classifier", lambda: None)() is head:
        model.num_features = head.in_features
        if hasattr(model, "head_hidden_size"):
            model.head_hidden_size = head.in_features
        model.reset_classifier(classes)
        model.get_classifier().to(device, dtype)
        how = "timm reset_classifier"
    else:
        _set(model, name, nn.Linear(head.in_features, classes, bias=head.bias is not None).to(device, dtype))
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "num_labels"):
            config.num_labels = classes
            how = "Hugging Face num_labels"
        else:
            how = f"last Linear, {name}"
    return f"replaced the head: {old} -> {classes} classes ({how})"
