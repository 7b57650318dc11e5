"""``timm:<name>[@weights]``: a timm model named on the command line, with the weights the user asked for.

- ``timm:resnet18``: timm's architecture with random weights (what works with no network); the CLI
  says so on stderr, since pruning an untrained model is rarely what anyone wants;
- ``timm:resnet18@pretrained``: ``timm.create_model(name, pretrained=True)``, timm's own loading from
  the Hugging Face hub or its cache (a pretrained tag works too: ``timm:resnet18.a1_in1k@pretrained``);
- ``timm:resnet18@PATH``: timm's pretrained loading from a local file (``.safetensors``, or a
  ``.pth``/``.bin`` state dict that timm opens with ``torch.load(weights_only=True)``, so no code in it
  runs), through ``pretrained_cfg_overlay={"file": PATH}``. Classifier heads of another size are
  adapted by timm as for hub weights (``num_classes`` mismatch: the head is re-initialised).

>>> parse_timm_spec("timm:resnet18@pretrained")
('resnet18', 'pretrained')
>>> parse_timm_spec("timm:vit_small_patch16_224")
('vit_small_patch16_224', None)
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from prunekit.errors import PruningError

__all__ = ["parse_timm_spec", "check_timm_spec", "create_timm_model"]


def parse_timm_spec(spec: str) -> tuple[str, str | None]:
    """``"timm:NAME[@WEIGHTS]"`` -> ``(NAME, WEIGHTS or None)``."""
    body = spec[len("timm:"):] if spec.startswith("timm:") else spec
    name, sep, weights = body.partition("@")
    return name, (weights if sep else None)


def check_timm_spec(spec: str) -> tuple[str, str | None]:
    """Parse and check ``spec`` before any model is built: the architecture exists and a weights file
    is a readable file. Raises a one-line :class:`~prunekit.PruningError` naming the fix."""
    import timm
    name, weights = parse_timm_spec(spec)
    arch = name.split(".")[0]  # "resnet18.a1_in1k": the tag names weights, the part before it the model
    if not timm.is_model(arch):
        near = timm.list_models(f"*{arch}*")[:5]
        raise PruningError(spec, "load the model", "timm has no such model" + (f"; did you mean {near}?" if near
                           else "; timm.list_models() lists the names"))
    if weights is not None and weights != "pretrained":
        if not weights:
            raise PruningError(spec, "load the model", "nothing after '@'; use timm:NAME@pretrained (timm's hub "
                               "weights) or timm:NAME@PATH (a local .safetensors or .pth file)")
        if not Path(weights).is_file():
            raise PruningError(spec, "load the model", f"weights file {weights} does not exist; give the path of a "
                               ".safetensors or .pth file, or @pretrained for timm's hub weights")
    return name, weights


def create_timm_model(spec: str, **kwargs) -> nn.Module:
    """Build the model ``spec`` names, in eval mode, with the weights it asks for.

    >>> create_timm_model("timm:test_resnet").training
    False
    """
    import timm
    name, weights = check_timm_spec(spec)
    if weights is None:
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    overlay = {} if weights == "pretrained" else {"pretrained_cfg_overlay": {"file": str(Path(weights).resolve())}}
    try:
        model = timm.create_model(name, pretrained=True, **overlay, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:  # hub unreachable, no such tag, a state dict of another model
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        fix = ("download needs the Hugging Face hub (or timm's cache); offline, give a local file: "
               f"timm:{name}@weights.safetensors") if weights == "pretrained" else \
            f"the file must hold a state dict of timm's {name.split('.')[0]}"
        raise PruningError(spec, "load pretrained weights", f"{first}; {fix}") from None
    return model.eval()
