"""Reports: a markdown table, a self-contained HTML page and PNG plots of metric against MACs and speed.

A row is one (model, method) measurement, the shape :func:`prunekit.demo.run_demo` writes:
``model``, ``method``, ``family``, ``params``, ``macs``, ``metric_name``, ``metric``, and the timings
``latency_ms`` / ``dense_latency_ms`` / ``speedup`` (the example batch) and ``throughput`` /
``dense_throughput`` / ``throughput_speedup`` (images/s at ``throughput_batch``), each pair from one
interleaved measurement of the dense and the compressed model. ``vs dense`` always compares with the
``dense`` row of the same model.

>>> rows = [{"model": "m", "method": "dense", "params": 10, "macs": 100, "latency_ms": 2.0,
...          "metric_name": "top1", "metric": 0.9}]
>>> print(markdown_table(rows).splitlines()[2])
| m | dense | 10 | 100 | top1=0.9000 | 2.00 |  |
"""
from __future__ import annotations

import base64
import html
import json
import textwrap
from pathlib import Path

__all__ = ["markdown_table", "html_report", "tradeoff_figure", "plot_tradeoff", "plot_layers", "pareto_front",
           "family_of", "write_report"]

FAMILIES = ("structured", "sparsity", "during training", "drop blocks", "ToMe", "local merge", "token pruning")
_STYLE = {f: (m, f"C{i}") for i, (f, m) in enumerate(zip(FAMILIES, "osDv^PX", strict=False))}


def family_of(row: dict) -> str:
    """The row's method family: its ``family`` key, else guessed from the method's name.

    >>> family_of({"method": "ToMe r=8"}), family_of({"method": "sparsity 50% wanda"})
    ('ToMe', 'sparsity')
    """
    if row.get("family"):
        return row["family"]
    m = row["method"].lower()
    for key, fam in (("during training", "during training"), ("structured", "structured"), ("sparsity", "sparsity"),
                     ("drop", "drop blocks"), ("tube", "local merge"), ("window", "local merge"),
                     ("local", "local merge"), ("tome", "ToMe"), ("dynamic", "token pruning")):
        if key in m:
            return fam
    return "dense" if m == "dense" else m.split(":")[0]


def _dense_of(rows: list[dict]) -> dict[str, dict]:
    return {r["model"]: r for r in rows if r["method"] == "dense" and not r.get("error")}


def _speed(row: dict, dense: dict, key: str = "speedup") -> float | None:
    """The same-run speed-up: ``row[key]``; for old rows without it, the ratio of the two latencies."""
    if row.get(key):
        return row[key]
    if key == "speedup" and row.get("latency_ms") and dense.get("latency_ms"):
        return dense["latency_ms"] / row["latency_ms"]
    return None


def _cells(r: dict, d: dict | None) -> list[str]:
    """The table cells of one row; ``d`` is the model's dense row."""
    d = d or {}
    metric = f"{r['metric_name']}={r['metric']:.4f}" if r.get("metric") is not None else ""
    macs = f"{r['macs']:,}"
    if r is not d and d.get("macs") and r.get("metric") is not None and d.get("metric") is not None:
        metric += f" ({r['metric'] - d['metric']:+.4f})"
    if r is not d and d.get("macs"):
        macs += f" ({r['macs'] / d['macs']:.2f}x)"
    lat = f"{r['latency_ms']:.2f}"
    if r is not d and r.get("dense_latency_ms"):
        lat = f"{r['dense_latency_ms']:.2f} → {r['latency_ms']:.2f}"
    speed = _speed(r, d) if r is not d else None
    cells = [r["model"], r["method"], f"{r['params']:,}", macs, metric, lat, f"{speed:.2f}x" if speed else ""]
    if r.get("throughput"):
        tput = f"{r['throughput']:,.0f}"
        if r is not d and r.get("dense_throughput"):
            tput = f"{r['dense_throughput']:,.0f} → {tput}"
        ts = r.get("throughput_speedup")
        cells += [tput, f"{ts:.2f}x" if ts and r is not d else ""]
    return cells


def _header(rows: list[dict]) -> list[str]:
    lat_b = next((r["batch_size"] for r in rows if r.get("batch_size")), None)
    tp_b = next((r["throughput_batch"] for r in rows if r.get("throughput_batch")), None)
    at = f" (batch {lat_b})" if lat_b else ""
    cols = ["model", "method", "params", "MACs", "metric", f"latency ms{at}: dense → this", "speed-up (latency)"]
    if tp_b:
        cols += [f"images/s (batch {tp_b}): dense → this", "speed-up (throughput)"]
    return cols


def _table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    dense = _dense_of(rows)
    head = _header(rows)
    body = []
    for r in rows:
        if r.get("error"):
            body.append([r["model"], r["method"], "", "", f"failed: {r['error']}"] + [""] * (len(head) - 5))
        else:
            body.append((_cells(r, dense.get(r["model"])) + [""] * len(head))[:len(head)])
    return head, body


def markdown_table(rows: list[dict]) -> str:
    """One line per (model, method): MACs and metric with their change from dense, the latency at the
    example batch and the throughput at the throughput batch, each as ``dense → this`` plus the
    speed-up from that same interleaved measurement.
    """
    head, body = _table(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in body]
    return "\n".join(lines)


def pareto_front(points: list[tuple[float, float]], minimize_x: bool = True) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (x smaller, or larger if not ``minimize_x``; y
    larger), sorted by x.

    >>> pareto_front([(0.5, 0.9), (0.6, 0.8), (0.7, 0.95), (0.4, 0.7)])
    [(0.4, 0.7), (0.5, 0.9), (0.7, 0.95)]
    >>> pareto_front([(1.2, 0.9), (1.5, 0.85), (1.1, 0.8)], minimize_x=False)
    [(1.2, 0.9), (1.5, 0.85)]
    """
    sign = 1 if minimize_x else -1
    best, front = float("-inf"), []
    for x, y in sorted(set(points), key=lambda p: (sign * p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return sorted(front)


# offsets (in points) tried around a point, nearest first, until the label overlaps nothing
_OFFSETS = [(dx * k, dy * k) for k in (1, 2, 3, 4, 5) for dx, dy in
            ((4, 4), (4, -9), (-9, 4), (-9, -9), (6, -2), (-12, -2), (-2, 7), (-2, -12))]


def _place(ax, xy: tuple[float, float], text: str, taken: list, renderer, **kw):
    """Annotate ``xy`` with ``text`` at the first offset whose box overlaps no box in ``taken`` and
    stays inside the axes; the box is appended to ``taken``."""
    inside = ax.get_window_extent(renderer)
    ann = None
    for off in _OFFSETS:
        ann = ax.annotate(text, xy, xytext=off, textcoords="offset points", fontsize=7, gid="pointlabel", **kw)
        box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
        ok = (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1
              and not any(box.overlaps(t) for t in taken))
        if ok:
            taken.append(box)
            return ann
        ann.remove()
    ann = ax.annotate(text, xy, xytext=_OFFSETS[0], textcoords="offset points", fontsize=7, gid="pointlabel", **kw)
    ann.set_visible(False)  # no free place: the point keeps its number in the key, and no label overlaps
    return ann


KEY_WIDTH = 52  # characters per line of the key beside each model's panels


def tradeoff_figure(rows: list[dict]):
    """Small multiples, one row of panels per model: metric against MACs / dense, metric against the
    measured speed-up, and the key of the numbered points. One marker and colour per method family,
    a line along each family's Pareto front, the dense point as a black star. Point labels are
    numbers placed where they overlap no other label and no marker (see :func:`_place`).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    dense = _dense_of(rows)
    models = [m for m in dict.fromkeys(r["model"] for r in rows) if m in dense and dense[m].get("metric") is not None]
    n = max(1, len(models))
    height = 3.4 * n + 0.9  # inches: the panels plus a header of title and legend
    fig, axes = plt.subplots(n, 3, figsize=(15, height), squeeze=False, gridspec_kw={"width_ratios": [1, 1, 0.9]})
    speed_key = "throughput_speedup" if any(r.get("throughput_speedup") for r in rows) else "speedup"
    to_label = []  # (axes, dense xy, [(number, xy)])
    for i, model in enumerate(models):
        d = dense[model]
        pts = [r for r in rows if r["model"] == model and r is not d and not r.get("error")
               and r.get("metric") is not None]
        ax_m, ax_s, ax_k = axes[i]
        on_macs = [(j + 1, r, (r["macs"] / d["macs"], r["metric"])) for j, r in enumerate(pts)]
        on_speed = [(j + 1, r, (s, r["metric"])) for j, r in enumerate(pts) if (s := _speed(r, d, speed_key))]
        for ax, series, minimize in ((ax_m, on_macs, True), (ax_s, on_speed, False)):
            ax.scatter([1.0], [d["metric"]], marker="*", s=140, color="black", zorder=5)
            fams: dict[str, list] = {}
            for _, r, xy in series:
                fams.setdefault(family_of(r), []).append(xy)
                marker, colour = _STYLE.get(family_of(r), ("x", "grey"))
                ax.scatter(*xy, marker=marker, color=colour, s=36, zorder=4)
            for fam, xys in fams.items():
                front = pareto_front(xys, minimize_x=minimize)
                if len(front) > 1:
                    ax.plot(*zip(*front, strict=True), color=_STYLE.get(fam, ("x", "grey"))[1], lw=1, alpha=0.7)
            ax.grid(alpha=0.3)
            ax.set_ylabel(d["metric_name"])
            ax.margins(0.15, 0.2)
            to_label.append((ax, (1.0, d["metric"]), [(num, xy) for num, _, xy in series]))
        ax_m.set_xlabel("MACs / dense MACs")
        ax_s.set_xlabel("measured speed-up over dense" + (" (throughput)" if speed_key == "throughput_speedup" else ""))
        ax_m.set_title(model, loc="left", fontsize=10, fontweight="bold")
        ax_k.axis("off")
        y = 1.0
        for j, r in enumerate(pts):  # wrapped, so a long method name stays inside the figure
            colour = _STYLE.get(family_of(r), ("x", "grey"))[1]
            lines = textwrap.wrap(f"{j + 1}  {r['method']}", KEY_WIDTH, subsequent_indent="    ")
            ax_k.text(0, y, "\n".join(lines), color=colour, fontsize=7.5, va="top", linespacing=1.15,
                      transform=ax_k.transAxes)
            y -= 0.07 * len(lines) + 0.02
    used = {family_of(r) for r in rows if r["method"] != "dense" and not r.get("error")}
    handles = [Line2D([], [], marker="*", color="black", ls="", ms=10, label="dense")]
    handles += [Line2D([], [], marker=m, color=c, ls="-", lw=1, label=f) for f, (m, c) in _STYLE.items() if f in used]
    fig.suptitle("prunekit: task metric against compute and measured speed (lines: each family's Pareto front)",
                 fontsize=11, y=1 - 0.1 / height, va="top")
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.4 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.85 / height))
    fig.canvas.draw()  # final axes positions and limits: labels are placed in display space
    renderer = fig.canvas.get_renderer()
    for ax, dense_xy, series in to_label:
        taken = [_marker_box(ax, xy) for xy in [dense_xy] + [xy for _, xy in series]]
        _place(ax, dense_xy, "dense", taken, renderer)
        for num, xy in series:
            _place(ax, xy, str(num), taken, renderer)
    return fig


def _marker_box(ax, xy: tuple[float, float]):
    """The display-space box of a marker at ``xy``, so that no label covers a point."""
    from matplotlib.transforms import Bbox
    x, y = ax.transData.transform(xy)
    return Bbox.from_extents(x - 4, y - 4, x + 4, y + 4)


def plot_tradeoff(rows: list[dict], path: Path) -> Path:
    """Save :func:`tradeoff_figure` as a PNG at ``path``."""
    import matplotlib.pyplot as plt
    fig = tradeoff_figure(rows)
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_layers(row: dict, path: Path) -> Path | None:
    """Per-layer chart of one row's ``layers``: kept output channels against dense for structured
    pruning, or the sparsity of each layer; ``None`` when the row has neither."""
    layers = row.get("layers") or []
    widths = [la for la in layers if la["out"] != la["dense_out"]]
    sparse = [la for la in layers if la.get("sparsity", 0) > 0.01]
    if not widths and not sparse:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [la["name"] for la in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(names) + 2), 3.6))
    idx = range(len(names))
    if widths:
        ax.bar(idx, [la["dense_out"] for la in layers], color="lightgrey", label="dense")
        ax.bar(idx, [la["out"] for la in layers], color="C0", label="kept")
        ax.set_ylabel("output channels / features")
        ax.legend(fontsize=8)
    else:
        ax.bar(idx, [la.get("sparsity", 0.0) for la in layers], color="C1")
        ax.set_ylabel("sparsity (share of zero weights)")
        ax.set_ylim(0, 1)
    ax.set_xticks(list(idx), names, rotation=90, fontsize=6)
    ax.set_title(f"{row['model']}: {row['method']}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.style.cursor = 'pointer';
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
    var asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
    var num = function (s) {
      var m = s.replace(/,/g, '').match(/-?[0-9.]+(e-?[0-9]+)?/); return m ? parseFloat(m[0]) : NaN;
    };
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent, y = b.cells[col].textContent, nx = num(x), ny = num(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def html_report(rows: list[dict], figures: list[Path], header: str = "") -> str:
    """One self-contained HTML page: the table (click a header to sort, plain JavaScript) and every
    figure embedded as a data URI, so nothing is fetched when it is viewed."""
    head, body = _table(rows)
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    figs = "\n".join(f"<figure>{_img(p)}</figure>" for p in figures)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>prunekit report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: left; }}
th {{ background: #eef; }} tr:nth-child(even) td {{ background: #f8f8f8; }}
img {{ max-width: 100%; }} figure {{ margin: 1.5em 0; }}
</style></head><body>
<h1>prunekit report</h1>
<p>{html.escape(header)}</p>
<table class="sortable"><thead><tr>{th}</tr></thead><tbody>
{trs}
</tbody></table>
{figs}
<script>{_SORT_JS}</script>
</body></html>
"""


def write_report(rows: list[dict], out_dir: Path, header: str = "") -> Path:
    """Write ``report.md``, ``report.html`` (self-contained), ``results.json``, ``tradeoff.png`` and one
    ``layers-<i>.png`` per structured or sparse row under ``out_dir``; returns the markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_tradeoff(rows, out_dir / "tradeoff.png")
    layer_plots = [p for i, r in enumerate(rows) if not r.get("error")
                   for p in [plot_layers(r, out_dir / f"layers-{i}.png")] if p]
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2))
    (out_dir / "report.html").write_text(html_report(rows, [plot, *layer_plots], header))
    md = out_dir / "report.md"
    per_layer = "\n".join(f"![{p.stem}]({p.name})" for p in layer_plots)
    md.write_text(f"# prunekit report\n\n{header}\n\n{markdown_table(rows)}\n\n![tradeoff]({plot.name})\n\n"
                  + (f"## Per layer\n\n{per_layer}\n" if per_layer else ""))
    return md
