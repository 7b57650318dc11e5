"""Time to analyse (trace into groups) and prune timm resnet50 and vit_base_patch16_224 on the CPU.

One 224 px image; ``ratio=0.3``, global scope, l2. Wall-clock seconds, one run each (plus the
forward pass the trace needs). Random weights: the time does not depend on them.

    python benchmarks/bench_structured_time.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

import prunekit  # noqa: E402
from prunekit.measure import measure_latency  # noqa: E402


def main() -> None:
    rows, raw = [], {}
    for name in sys.argv[1:] or ["resnet50", "vit_base_patch16_224"]:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval()
        x = (torch.randn(1, 3, 224, 224),)
        fwd = measure_latency(model, x, warmup=1, repeats=3)["latency_ms"] / 1e3
        t0 = time.perf_counter()
        grps = prunekit.groups(model, x)
        t_groups = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = prunekit.prune(model, x, ratio=0.3)
        t_prune = time.perf_counter() - t0
        row = [name, len(grps), round(fwd, 3), round(t_groups, 2), round(t_prune, 2), round(res.macs_ratio, 3),
               round(res.params_ratio, 3)]
        print(row, flush=True)
        rows.append(row)
        raw[name] = {"decisions": len(res.decisions)}
    write_result("structured_time", "Time to analyse and prune on the CPU",
                 ["model", "groups", "forward s", "groups() s", "prune() s", "MACs kept", "params kept"], rows,
                 "prune() includes its own trace, scoring, surgery, a checking forward and two MAC counts. "
                 "Batch 1 at 224 px.", setup={"batch_size": 1})


if __name__ == "__main__":
    main()
