"""Reports: the table's same-run comparison with dense, the plots' labels and Pareto fronts, the HTML page."""
import itertools
import re
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prunekit.report import html_report, markdown_table, pareto_front, plot_layers, tradeoff_figure, write_report

DENSE = {"model": "m", "method": "dense", "params": 10, "macs": 100, "latency_ms": 2.0,
         "metric_name": "top1", "metric": 0.9}


def _row(method, macs, metric, speed, family=None, model="m"):
    return {"model": model, "method": method, "family": family, "params": 5, "macs": macs, "metric_name": "top1",
            "metric": metric, "batch_size": 8, "latency_ms": 2.0 / speed, "dense_latency_ms": 2.0, "speedup": speed,
            "throughput_batch": 32, "throughput": 100 * speed, "dense_throughput": 100.0,
            "throughput_speedup": speed}


def test_latency_and_speed_come_from_the_same_paired_measurement():
    row = _row("pruned", 50, 0.85, 1.6)
    row.update(latency_ms=1.25, dense_latency_ms=2.0, throughput=150.0, dense_throughput=100.0,
               throughput_speedup=1.5)
    table = markdown_table([DENSE, row])
    head, _, _, line = table.splitlines()
    assert "latency ms (batch 8): dense → this" in head and "images/s (batch 32): dense → this" in head
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3] == "50 (0.50x)" and cells[4] == "top1=0.8500 (-0.0500)"
    assert cells[5:] == ["2.00 → 1.25", "1.60x", "100 → 150", "1.50x"]


def test_failed_rows_are_shown_and_every_file_written(tmp_path):
    failed = {"model": "m", "method": "broken", "error": "PruningError: x"}
    report = write_report([DENSE, failed], tmp_path / "run", "header")
    assert "| m | broken |  |  | failed: PruningError: x |" in report.read_text()
    for name in ("tradeoff.png", "report.html", "results.json"):
        assert (tmp_path / "run" / name).stat().st_size > 1000 or name == "results.json"


def _cluster():
    """Twenty points in three families and two models, most of them piled near one spot."""
    rows = [DENSE, {**DENSE, "model": "n", "macs": 200}]
    for i in range(14):
        fam = ("structured", "sparsity", "ToMe")[i % 3]
        rows.append(_row(f"{fam} {i}", 50 + (i % 4), 0.89 - 0.001 * i, 1.3 + 0.002 * i, fam))
    for i in range(6):
        rows.append(_row(f"ToMe r={i}", 120 + i, 0.8 + 0.01 * i, 1.1 + 0.1 * i, "ToMe", model="n"))
    return rows


def test_point_labels_never_overlap_and_stay_inside_their_panel():
    import matplotlib.pyplot as plt
    fig = tradeoff_figure(_cluster())
    renderer = fig.canvas.get_renderer()
    try:
        labels = [t for t in fig.findobj(lambda a: a.get_gid() == "pointlabel") if t.get_visible()]
        assert len(labels) >= 2 * (1 + 14) - 4  # a label that finds no free place is hidden, never piled
        boxes = [(t.axes, t.get_window_extent(renderer)) for t in labels]
        for (_, a), (_, b) in itertools.combinations(boxes, 2):
            assert not a.overlaps(b)
        for ax, box in boxes:
            inside = ax.get_window_extent(renderer)
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
        assert len(fig.axes) == 2 * 3  # one row of panels per model: metric-MACs, metric-speed, key
    finally:
        plt.close(fig)


points = st.lists(st.tuples(st.floats(0, 10, allow_nan=False), st.floats(0, 1, allow_nan=False)), min_size=1,
                  max_size=25)


@given(points, st.booleans())
def test_pareto_front_is_exactly_the_undominated_points(pts, minimize_x):
    def beats(a, b):  # a at least as good on both axes and better on one
        bx = a[0] <= b[0] if minimize_x else a[0] >= b[0]
        return bx and a[1] >= b[1] and a != b
    front = pareto_front(pts, minimize_x)
    assert front == sorted(front)
    assert set(front) == {p for p in pts if not any(beats(q, p) for q in pts)}


def test_layer_chart_for_structured_and_sparse_rows_only(tmp_path):
    widths = [{"name": f"l{i}", "dense_out": 16, "out": 16 - i, "sparsity": 0.0} for i in range(4)]
    assert plot_layers({**DENSE, "layers": widths}, tmp_path / "w.png").stat().st_size > 1000
    sparse = [{"name": f"l{i}", "dense_out": 16, "out": 16, "sparsity": 0.5} for i in range(4)]
    assert plot_layers({**DENSE, "layers": sparse}, tmp_path / "s.png").stat().st_size > 1000
    same = [{"name": "l0", "dense_out": 16, "out": 16, "sparsity": 0.0}]
    assert plot_layers({**DENSE, "layers": same}, tmp_path / "n.png") is None
    assert plot_layers(DENSE, tmp_path / "d.png") is None


def test_html_is_self_contained(tmp_path):
    write_report(_cluster(), tmp_path, "header")
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "<table class=\"sortable\">" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched at view time
    assert html_report([DENSE], [], "a <b>").count("a &lt;b&gt;") == 1


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="no chromium (make test installs the Debian package)")
def test_html_renders_in_headless_chromium(tmp_path):
    import numpy as np
    from matplotlib.image import imread
    write_report(_cluster(), tmp_path, "header")
    shot = tmp_path / "shot.png"
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1400",
                    (tmp_path / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (1400, 1200)
    dark = (img.mean(axis=2) < 0.5).mean()
    assert 0.01 < dark < 0.5  # text, table lines and plot marks: not a blank (or black) page
    assert len(np.unique((img * 255).astype(int).reshape(-1, 3), axis=0)) > 50  # the embedded plot's colours
