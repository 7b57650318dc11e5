"""The long fuzzing run: prune and sparsify on ``--examples`` random architectures (the grammar of
``tests/structured/fuzz_arch.py``), counting successes, clean refusals (``PruningError``, model
unchanged) and violations (anything else: a crash, a wrong output shape, MACs that differ from what
was reported, a refusal that changed the model). ``make test`` runs a CI-sized version.

    python benchmarks/bench_fuzz.py [--examples 10000] [--seed 0]
"""
from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests" / "structured"))
from common import write_result  # noqa: E402
from fuzz_arch import FuzzNet, random_spec  # noqa: E402

import prunekit  # noqa: E402
from prunekit.errors import PruningError  # noqa: E402
from prunekit.measure import count_macs  # noqa: E402

X = torch.randn(2, 3, 8, 8)


def one(spec, verb: str, rng: random.Random) -> tuple[str, str]:
    torch.manual_seed(0)
    model = FuzzNet(spec).eval()
    with torch.no_grad():
        ref = model(X)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            if verb == "prune":
                res = prunekit.prune(model, (X,), ratio=rng.choice([0.2, 0.5, 0.8]),
                                     scope=rng.choice(["global", "local"]))
            else:
                pattern = rng.choice(["unstructured", "2:4"])
                prunekit.sparsify(model, None if pattern == "2:4" else rng.choice([0.3, 0.7]), pattern=pattern)
        except PruningError as e:
            after = model.state_dict()
            same = after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
            return ("refused", e.reason[:80]) if same and torch.equal(model(X), ref) else ("violation", "changed")
        except Exception as e:  # noqa: BLE001
            return "violation", f"{type(e).__name__}: {str(e)[:80]}"
        out = model(X)
    if out.shape != ref.shape or not torch.isfinite(out).all():
        return "violation", "output shape or values"
    if verb == "prune" and res.macs_after != count_macs(model, (X,)):
        return "violation", "reported MACs differ"
    return "ok", ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    counts = {v: collections.Counter() for v in ("prune", "sparsify")}
    reasons = {v: collections.Counter() for v in ("prune", "sparsify")}
    examples: list = []
    t0 = time.time()
    for i in range(args.examples):
        spec = random_spec(rng)
        verb = "prune" if i % 2 == 0 else "sparsify"
        kind, why = one(spec, verb, rng)
        counts[verb][kind] += 1
        if kind != "ok":
            reasons[verb][f"{kind}: {why}"] += 1
            if kind == "violation" and len(examples) < 20:
                examples.append({"verb": verb, "spec": spec, "why": why})
    rows = [[verb, sum(c.values()), c["ok"], c["refused"], c["violation"]] for verb, c in counts.items()]
    write_result("fuzz", "Fuzzing prune and sparsify on random architectures", ["verb", "examples", "ok",
                 "refused cleanly (PruningError, model unchanged)", "violations"], rows,
                 notes=(f"{args.examples} architectures from tests/structured/fuzz_arch.py's grammar (conv, grouped "
                        "and depthwise conv, BN, residual add, concat, chunk, fixed torch.split, multi-head attention "
                        f"with reshape/permute, tied weights), seed {args.seed}, {time.time() - t0:.0f} s. Most common "
                        f"refusals and violations: {dict(reasons['prune'].most_common(4))} (prune), "
                        f"{dict(reasons['sparsify'].most_common(4))} (sparsify)."),
                 setup={"examples": args.examples, "seed": args.seed}, raw={"violations": examples})


if __name__ == "__main__":
    main()
