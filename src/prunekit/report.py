"""Reports: a markdown table and a PNG plot of task metric against MACs and latency.

>>> rows = [{"model": "m", "method": "dense", "params": 10, "macs": 100, "latency_ms": 2.0,
...          "metric_name": "top1", "metric": 0.9}]
>>> print(markdown_table(rows).splitlines()[0])
| model | method | params | MACs | latency ms | metric | vs dense |
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["markdown_table", "plot_tradeoff", "write_report"]


def _delta(row: dict, dense: dict | None) -> str:
    if not dense or row is dense or row.get("metric") is None:
        return ""
    speed = row.get("speedup") or dense["latency_ms"] / row["latency_ms"]
    return (f"{row['metric'] - dense['metric']:+.4f} metric, {row['macs'] / dense['macs']:.2f}x MACs, "
            f"{speed:.2f}x speed")


def markdown_table(rows: list[dict]) -> str:
    """One line per (model, method); ``vs dense`` compares with that model's ``dense`` row.

    The speed-up is the row's ``speedup`` (dense and compressed timed interleaved) when it has one.
    """
    dense = {r["model"]: r for r in rows if r["method"] == "dense"}
    lines = ["| model | method | params | MACs | latency ms | metric | vs dense |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['model']} | {r['method']} | | | | failed: {r['error']} | |")
            continue
        metric = f"{r['metric_name']}={r['metric']:.4f}" if r.get("metric") is not None else ""
        lines.append(f"| {r['model']} | {r['method']} | {r['params']:,} | {r['macs']:,} | "
                     f"{r['latency_ms']:.2f} | {metric} | {_delta(r, dense.get(r['model']))} |")
    return "\n".join(lines)


def plot_tradeoff(rows: list[dict], path: Path) -> Path:
    """Metric relative to dense against MAC fraction and against speed-up, one marker per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = {r["model"]: r for r in rows if r["method"] == "dense" and not r.get("error")}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    models = sorted({r["model"] for r in rows})
    markers = "os^Dvx*+"
    for i, model in enumerate(models):
        d = dense.get(model)
        pts = [r for r in rows if r["model"] == model and not r.get("error") and r.get("metric") is not None]
        if not d or not pts:
            continue
        for r in pts:
            rel = r["metric"] - d["metric"]
            kw = dict(marker=markers[i % len(markers)], color=f"C{i}", label=model if r is d else None)
            axes[0].scatter(r["macs"] / d["macs"], rel, **kw)
            speed = r.get("speedup") or d["latency_ms"] / r["latency_ms"]
            axes[1].scatter(speed, rel, **kw)
            if r is not d:
                axes[0].annotate(r["method"], (r["macs"] / d["macs"], rel), fontsize=6)
                axes[1].annotate(r["method"], (speed, rel), fontsize=6)
    axes[0].set_xlabel("MACs / dense MACs")
    axes[1].set_xlabel("speed-up over dense (latency ratio)")
    for ax in axes:
        ax.set_ylabel("metric − dense metric")
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("prunekit: task metric against compute and latency")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(rows: list[dict], out_dir: Path, header: str = "") -> Path:
    """Write ``report.md`` (table + plot) under ``out_dir``; returns the markdown path."""
    import json
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_tradeoff(rows, out_dir / "tradeoff.png")
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2))
    md = out_dir / "report.md"
    md.write_text(f"# prunekit report\n\n{header}\n\n{markdown_table(rows)}\n\n![tradeoff]({plot.name})\n")
    return md
