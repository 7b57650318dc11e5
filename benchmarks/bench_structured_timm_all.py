"""Pass rate of ``prunekit.prune`` over timm's ``list_models()``.

Pass = ``prune(ratio=0.3)`` returns, the forward still runs, every output keeps its shape and is
finite, and MACs drop to <= 0.8x. Each model is built with random weights at the default input
size of its ``pretrained_cfg``, batch 1, with a per-model time and memory limit. ``--sample N`` takes
every k-th name of the sorted list (a deterministic sample) when the whole list does not fit in the time
available. Each finished model is appended to ``results/structured_timm_all.partial.jsonl``; ``--resume``
skips the models already there, so the whole list can be run in pieces.

    python benchmarks/bench_structured_timm_all.py --workers 2 --timeout 30 --max-gb 9 --resume
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write_result  # noqa: E402


def _one(name: str, queue, max_gb: float = 0.0) -> None:
    if max_gb:  # a model too large for this machine fails with MemoryError instead of swapping it to death
        limit = int(max_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import timm
    import torch

    import prunekit
    from prunekit.structured.trace import flat_tensors as _tensors
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        model = timm.create_model(name, pretrained=False).eval()
        cfg_size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        x = torch.randn(1, *cfg_size)
        with torch.no_grad():
            ref = [t.shape for t in _tensors(model(x))]
    except MemoryError:
        queue.put({"name": name, "status": "too_large", "error": f"needs more than {max_gb} GB to build and run"})
        return
    except Exception as e:  # noqa: BLE001
        status = "too_large" if "memory" in str(e).lower() else "build_error"
        queue.put({"name": name, "status": status, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        return
    try:
        res = prunekit.prune(model, (x,), ratio=0.3)
        with torch.no_grad():
            out = _tensors(model(x))
        same = [t.shape for t in out] == ref and all(torch.isfinite(t).all() for t in out)
        ok = same and res.macs_after <= 0.8 * res.macs_before
        status = "pass" if ok else ("weak" if same else "broken")
        queue.put({"name": name, "status": status, "macs_ratio": round(res.macs_ratio, 3),
                   "params_ratio": round(res.params_ratio, 3), "seconds": round(time.perf_counter() - t0, 2)})
    except Exception as e:  # noqa: BLE001
        r = {"name": name, "status": "error", "error": f"{type(e).__name__}: {str(e)[:300]}"}
        try:  # the same model with on_failure="skip": failing module classes left as they are
            res = prunekit.prune(model, (x,), ratio=0.3, on_failure="skip")
            with torch.no_grad():
                out = _tensors(model(x))
            same = [t.shape for t in out] == ref and all(torch.isfinite(t).all() for t in out)
            r["status_skip"] = "pass" if same and res.macs_after <= 0.8 * res.macs_before else (
                "weak" if same else "broken")
            r["macs_ratio_skip"] = round(res.macs_ratio, 3)
            r["skipped"] = [s["class"] for s in res.skipped]
        except Exception as e2:  # noqa: BLE001
            r["status_skip"] = "error"
            r["error_skip"] = f"{type(e2).__name__}: {str(e2)[:200]}"
        queue.put(r)


def _run_all(names: list[str], timeout: float, workers: int, max_gb: float, partial: Path) -> list[dict]:
    """Run ``_one`` for each name in up to ``workers`` processes; append each result to ``partial``."""
    ctx = mp.get_context("fork")
    todo, live, results = list(names), [], []
    with partial.open("a") as fh:
        while todo or live:
            while todo and len(live) < workers:
                name = todo.pop(0)
                q = ctx.Queue()
                p = ctx.Process(target=_one, args=(name, q, max_gb))
                p.start()
                live.append((name, p, q, time.monotonic()))
            time.sleep(0.05)
            for item in list(live):
                name, p, q, t0 = item
                r = None
                if not q.empty():
                    r = q.get()
                    p.join(5)
                    if p.is_alive():
                        p.kill()
                elif not p.is_alive():
                    r = q.get() if not q.empty() else {"name": name, "status": "crash", "exitcode": p.exitcode}
                elif time.monotonic() - t0 > timeout:
                    p.kill()
                    p.join()
                    r = {"name": name, "status": "timeout"}
                if r is not None:
                    live.remove(item)
                    print(json.dumps(r), flush=True)
                    fh.write(json.dumps(r) + "\n")
                    fh.flush()
                    results.append(r)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=0, help="every k-th model so that about N are tried (0: all)")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--workers", type=int, default=1, help="models run at once, one torch thread each")
    ap.add_argument("--max-gb", type=float, default=0.0, help="address-space limit per model (0: none)")
    ap.add_argument("--resume", action="store_true", help="keep the results already in the partial file")
    ap.add_argument("--report-only", action="store_true",
                    help="write the JSON from the partial file without running the models left")
    ap.add_argument("--names", default="", help="comma list instead of list_models()")
    args = ap.parse_args()
    if args.report_only:
        args.resume = True
    import timm
    names = args.names.split(",") if args.names else sorted(timm.list_models())
    total = len(names)
    if args.sample and args.sample < total:
        step = total / args.sample
        names = [names[int(i * step)] for i in range(args.sample)]
    RESULTS.mkdir(exist_ok=True)
    partial = RESULTS / "structured_timm_all.partial.jsonl"
    done = [json.loads(line) for line in partial.read_text().splitlines() if line.strip()] \
        if args.resume and partial.is_file() else []
    if not args.resume:
        partial.unlink(missing_ok=True)
    wanted = set(names)
    done = [r for r in done if r["name"] in wanted]
    seen = {r["name"] for r in done}
    left = [n for n in names if n not in seen]
    results = done + ([] if args.report_only else _run_all(left, args.timeout, args.workers, args.max_gb, partial))
    unfinished = len(names) - len(results)
    results.sort(key=lambda r: r["name"])
    for r in results:  # out of memory while tracing or pruning: the machine's limit, not the engine's
        if r["status"] == "error" and "allocate memory" in r.get("error", ""):
            r["status"] = "too_large"
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    untried = sum(counts.get(k, 0) for k in ("build_error", "timeout", "too_large"))
    tried = len(results) - untried
    rate = counts.get("pass", 0) / max(1, tried)
    passed_skip = counts.get("pass", 0) + sum(1 for r in results if r.get("status_skip") == "pass")
    rows = [[k, v] for k, v in sorted(counts.items())] + [
        ["pass rate (of models that built and finished)", round(rate, 3)],
        ['pass rate with on_failure="skip" (errors retried)', round(passed_skip / max(1, tried), 3)],
        ["pass rate of every model run (untried ones count as failures)",
         round(counts.get("pass", 0) / max(1, len(results)), 3)]]
    write_result("structured_timm_all", "prune(ratio=0.3) over timm list_models()", ["outcome", "models"], rows,
                 f"{len(results)} of {total} timm models ({'every k-th, deterministic' if args.sample else 'all'}"
                 f"{f'; {unfinished} not run yet (--resume continues)' if unfinished else ''}), "
                 f"random weights, default input size, batch 1, {args.timeout:.0f}s and "
                 f"{args.max_gb or 'no'} GB limit per model, {args.workers} at once. pass: forward "
                 "intact, shapes unchanged, finite, MACs <= 0.8x; weak: intact but MACs > 0.8x; broken: output "
                 "changed shape; error: PruningError or other exception (model left unchanged); each error is "
                 "retried with on_failure='skip', which leaves the failing module classes as they are.",
                 setup={"sample": args.sample, "timeout_s": args.timeout, "threads": 1, "workers": args.workers,
                        "max_gb": args.max_gb, "models_listed": total, "models_run": len(results),
                        "unfinished": unfinished},
                 raw={"results": results})
    if not unfinished:
        partial.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
