"""``prunekit tokens show NAME --r R --out merged.png``: which patches merged into which token (ToMe,
Bolya et al., ICLR 2023), drawn over an input image of the model's workload."""
from __future__ import annotations

from prunekit.cli.common import resolve_model


def register(sub) -> None:
    p = sub.add_parser("tokens", help="token merging tools")
    tsub = p.add_subparsers(dest="tokens_command", required=True)
    show = tsub.add_parser("show", help="draw the merged tokens over an input image")
    show.add_argument("model", help="zoo name, timm:<name> or saved model path (a ViT)")
    show.add_argument("--r", type=int, required=True, help="tokens merged per layer")
    show.add_argument("--out", default="merged.png", help="PNG to write")
    show.add_argument("--index", type=int, default=0, help="which example input to draw")
    show.set_defaults(func=run_show)


def run_show(args) -> int:
    import torch

    from prunekit.tokens.show import draw_merges, merge_groups

    wl = resolve_model(args.model)
    inputs = wl.example_inputs
    x = inputs.get("pixel_values") if isinstance(inputs, dict) else inputs[0]
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise SystemExit(f"{args.model}: tokens show needs an image model (inputs of shape B, C, H, W)")
    image = x[args.index]
    labels = merge_groups(wl.model, image, args.r)
    path = draw_merges(image, labels, args.out, title=f"{wl.name}, r={args.r}")
    print(f"wrote {path}: {labels.numel()} patches -> {int(labels.unique().numel())} tokens")
    return 0
