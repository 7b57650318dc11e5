"""Timing helper shared by the bench_tome_* scripts (not a benchmark itself).

The benchmark machine is shared with training jobs running at a higher priority, so wall-clock
latency swings by several x within a minute. Besides the wall-clock median, every forward is also
timed in process CPU time: with one intra-op thread (the setting used), CPU time counts only the
cycles this process got, so it is insensitive to preemption (not to cache or memory-bandwidth
contention). Configurations are measured in alternating rounds against the dense model and ratios
are the median of per-round ratios.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from prunekit.measure import run_model


def time_forward(model: torch.nn.Module, inputs: Any, warmup: int = 1, repeats: int = 3) -> dict:
    """Median wall-clock and process-CPU milliseconds of one forward."""
    wall, cpu = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            run_model(model, inputs)
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            run_model(model, inputs)
            cpu.append((time.process_time() - c0) * 1e3)
            wall.append((time.perf_counter() - w0) * 1e3)
    return {"wall_ms": statistics.median(wall), "cpu_ms": statistics.median(cpu)}


def paired_rounds(model: torch.nn.Module, inputs: Any, configs: dict[str, Callable[[], None]],
                  dense: Callable[[], None], rounds: int = 3, repeats: int = 3, log: bool = True) -> dict:
    """For each round and config: time dense, then the config. Returns per config the lists of
    ``wall_ms``/``cpu_ms`` and the medians of the per-round dense/config ratios."""
    out: dict[str, dict] = {name: {"wall_ms": [], "cpu_ms": [], "dense_wall_ms": [], "dense_cpu_ms": []}
                            for name in configs}
    torch.set_num_threads(1)
    for rnd in range(rounds):
        names = list(configs) if rnd % 2 == 0 else list(configs)[::-1]
        for name in names:
            dense()
            d = time_forward(model, inputs, repeats=repeats)
            configs[name]()
            m = time_forward(model, inputs, repeats=repeats)
            rec = out[name]
            rec["wall_ms"].append(m["wall_ms"])
            rec["cpu_ms"].append(m["cpu_ms"])
            rec["dense_wall_ms"].append(d["wall_ms"])
            rec["dense_cpu_ms"].append(d["cpu_ms"])
        if log:
            print(f"round {rnd}: " + ", ".join(
                f"{n}: {out[n]['dense_cpu_ms'][-1] / out[n]['cpu_ms'][-1]:.2f}x cpu" for n in configs), flush=True)
    dense()
    for rec in out.values():
        rec["ratio_wall"] = statistics.median(a / b for a, b in zip(rec["dense_wall_ms"], rec["wall_ms"], strict=True))
        rec["ratio_cpu"] = statistics.median(a / b for a, b in zip(rec["dense_cpu_ms"], rec["cpu_ms"], strict=True))
        rec["median_cpu_ms"] = statistics.median(rec["cpu_ms"])
        rec["median_wall_ms"] = statistics.median(rec["wall_ms"])
    return out


def paired_note(batch: int, rounds: int, repeats: int) -> str:
    """The results note's words for timings from :func:`paired_rounds`."""
    return (f"Latency: batch {batch}, 1 thread, {rounds} rounds x {repeats} forwards, each config paired with a "
            "dense run; throughput ratio = median of per-round dense/merged CPU-time ratios.")


if __name__ == "__main__":
    print(__doc__)
