"""``prunekit export MODEL --out FILE.onnx [--batch N] [--dynamic-batch] [--merge R | --target-macs F]
[--windows W | --tubes T] [--opset K] [--pad-to K | --no-pad] [--json]``.

Exports a zoo model, ``timm:<name>``, ``hf:<dir>`` or a saved prunekit file (pruned, sparsified,
DynamicViT) to ONNX with :func:`prunekit.export.export_onnx`, optionally token-merged first (the
``merge`` verb's options), and checks the file in onnxruntime against PyTorch before reporting
success; the max difference is printed. Pruned conv widths are zero-padded to a multiple of 8 in
the exported graph (``--pad-to``), which keeps the outputs and lets onnxruntime use its blocked
kernels.
"""
from __future__ import annotations

from prunekit.cli.common import check_range, compare, print_result, resolve_model


def register(sub) -> None:
    p = sub.add_parser("export", help="export to ONNX, checked in onnxruntime against PyTorch")
    p.add_argument("model", help="zoo name, timm:<name>, hf:<dir> or a saved model path")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--batch", type=int, default=None, help="batch size of the example input (default: the model's)")
    p.add_argument("--dynamic-batch", action="store_true", help="keep the batch dimension symbolic")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--merge", type=int, metavar="R", default=None, help="ToMe: merge R tokens per layer first")
    how.add_argument("--target-macs", type=float, default=None, help="ToMe with r solved for this share of MACs")
    local = p.add_mutually_exclusive_group()
    local.add_argument("--windows", type=int, metavar="W", help="local-then-global merging (merge_dense) first")
    local.add_argument("--tubes", type=int, metavar="T", help="time-tube merging (merge_video) first")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    pad = p.add_mutually_exclusive_group()
    pad.add_argument("--pad-to", type=int, metavar="K", default=8,
                     help="zero-pad pruned conv widths to a multiple of K in the exported graph, so onnxruntime's "
                          "blocked kernels run (default 8; 16 for AVX-512); outputs are unchanged")
    pad.add_argument("--no-pad", action="store_true", help="export the pruned widths as they are")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _batched(inputs, n: int | None):
    import torch
    if not n:
        return inputs

    def grow(t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        return t[:1].expand(n, *t.shape[1:]).clone() if t.shape[0] >= 1 else t
    return {k: grow(v) for k, v in inputs.items()} if isinstance(inputs, dict) else tuple(grow(t) for t in inputs)


def run(args) -> int:
    from prunekit.errors import PruningError
    from prunekit.export import export_onnx
    if not args.out.endswith(".onnx"):
        raise PruningError(f"--out {args.out}", "export", "give a path ending in .onnx")
    check_range("--batch", args.batch, 1, float("inf"), command="export")
    check_range("--merge", args.merge, 0, float("inf"), command="export")
    check_range("--target-macs", args.target_macs, 0, 1, lo_open=True, command="export")
    check_range("--pad-to", args.pad_to, 2, float("inf"), command="export")
    if (args.windows or args.tubes) and args.merge is None and args.target_macs is None:
        args.merge = 0
    wl = resolve_model(args.model)
    inputs = _batched(wl.example_inputs, args.batch)
    merged, dense = None, wl.model
    if args.merge is not None or args.target_macs is not None:
        import copy
        dense = copy.deepcopy(wl.model)
        from prunekit.tokens import merge, merge_dense, merge_video, schedule_of
        kw = dict(r=args.merge or 0, target_macs=args.target_macs, example_inputs=inputs)
        if args.windows is not None:
            merge_dense(wl.model, windows=args.windows, **kw)
        elif args.tubes is not None:
            merge_video(wl.model, tubes=args.tubes, **kw)
        else:
            merge(wl.model, **kw)
        merged = repr(schedule_of(wl.model))
    res = export_onnx(wl.model, inputs, args.out, dynamic_batch=args.dynamic_batch, opset=args.opset,
                      pad_to=None if args.no_pad else args.pad_to)
    # the shape every verb prints: the exported model (in PyTorch) against the model before merging
    from prunekit.measure import paired_timings, profile
    p = profile(wl.model, inputs, repeats=1, warmup=0, memory=False)
    d = profile(dense, inputs, repeats=1, warmup=0, memory=False) if dense is not wl.model else p
    shape = compare({**d, "model": wl.name}, p, "export", paired_timings(dense, wl.model, inputs, repeats=3))
    res = {"model": wl.name, **shape, **res}
    if merged:
        res["merge"] = {"schedule": merged, "windows": args.windows, "tubes": args.tubes}
    print_result(res, args.json)
    return 0
