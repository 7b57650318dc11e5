"""Reports: the markdown table's comparison with dense, and the plot file."""
from prunekit.report import markdown_table, write_report

DENSE = {"model": "m", "method": "dense", "params": 10, "macs": 100, "latency_ms": 2.0,
         "metric_name": "top1", "metric": 0.9}


def test_speed_uses_the_paired_measurement_when_present():
    paired = {**DENSE, "method": "pruned", "macs": 50, "latency_ms": 1.9, "metric": 0.85, "speedup": 1.6}
    unpaired = {**DENSE, "method": "other", "macs": 50, "latency_ms": 1.0, "metric": 0.8}
    table = markdown_table([DENSE, paired, unpaired])
    assert "-0.0500 metric, 0.50x MACs, 1.60x speed" in table
    assert "-0.1000 metric, 0.50x MACs, 2.00x speed" in table


def test_failed_rows_are_shown_and_report_written(tmp_path):
    failed = {"model": "m", "method": "broken", "error": "PruningError: x"}
    report = write_report([DENSE, failed], tmp_path / "run", "header")
    text = report.read_text()
    assert "| m | broken | | | | failed: PruningError: x | |" in text
    assert (tmp_path / "run" / "tradeoff.png").stat().st_size > 1000
