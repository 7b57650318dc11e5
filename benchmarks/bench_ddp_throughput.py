"""Training throughput of prunekit.train.fit: 1 process vs 2 gloo processes under torchrun, same cores.

fmnist-resnet (pruned to 50% of MACs, as a recovery fine-tune would train it) on Fashion-MNIST training
images, batch 64 per process, AdamW. Every arm trains ``--steps`` steps after ``--warmup`` untimed ones;
images/s counts images over all ranks. Arms: 1 process x 2 threads (the whole machine), 1 process x 1
thread, 2 processes x 1 thread (DDP, gloo). Scaling efficiency = DDP img/s / (2 x one 1-thread process).

    python benchmarks/bench_ddp_throughput.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def worker(out: str, steps: int, warmup: int, batch: int) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    import prunekit
    from prunekit.data import load_fashion_mnist, normalize
    from prunekit.train import Callback, distributed, fit
    from prunekit.zoo import load
    distributed.setup()
    rank, size = distributed.world()
    wl = load("fmnist-resnet")
    prunekit.prune(wl.model, wl.example_inputs, target_macs=0.5)
    x, y = load_fashion_mnist("train")
    n = (steps + warmup) * batch * size
    data = DataLoader(TensorDataset(normalize(x[:n]), y[:n]), batch_size=batch, shuffle=True, drop_last=True)
    clock = {}

    class Clock(Callback):
        def on_step_end(self, trainer):
            if trainer.step == warmup:
                distributed.barrier()
                clock["t0"] = time.perf_counter()
    fit(wl.model, data, epochs=1, lr=1e-3, callbacks=[Clock()], progress=False)
    distributed.barrier()
    seconds = time.perf_counter() - clock["t0"]
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": seconds, "images": steps * batch * size, "world": size}))
    distributed.shutdown()


def _arm(procs: int, threads: int, steps: int, warmup: int, batch: int) -> dict:
    out = tempfile.mktemp(suffix=".json")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    args = [__file__, "--worker", out, "--steps", str(steps), "--warmup", str(warmup), "--batch", str(batch)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *args] \
        if procs > 1 else [sys.executable, *args]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    res = json.loads(Path(out).read_text())
    res["images_per_s"] = res["images"] / res["seconds"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.steps, a.warmup, a.batch)
    from common import machine, write_result
    arms = {"1 process x 2 threads": (1, 2), "1 process x 1 thread": (1, 1),
            "2 processes x 1 thread (DDP, gloo)": (2, 1)}
    res = {name: _arm(p, t, a.steps, a.warmup, a.batch) for name, (p, t) in arms.items()}
    one = res["1 process x 1 thread"]["images_per_s"]
    rows = [[name, p * t, round(r["images_per_s"], 1), round(r["images_per_s"] / one, 3)]
            for name, (p, t), r in zip(arms, arms.values(), res.values(), strict=True)]
    ddp = res["2 processes x 1 thread (DDP, gloo)"]["images_per_s"]
    notes = (f"fmnist-resnet at 50% of MACs, batch {a.batch} per process, {a.steps} timed AdamW steps after "
             f"{a.warmup} warm-up steps, each arm in its own process(es) of one run. DDP scaling efficiency "
             f"{ddp / (2 * one):.3f} (2-process img/s over twice one 1-thread process). No GPU was lent, so "
             "the 1-vs-all-GPUs row is not measured.")
    write_result("ddp_throughput", "prunekit.train: training throughput, 1 process vs 2 gloo processes (torchrun)",
                 ["arm", "cores used", "images/s", "vs 1 process x 1 thread"], rows, notes,
                 setup={**machine(), "batch_size": a.batch, "steps": a.steps},
                 raw={k: v for k, v in res.items()})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
