"""Reports from the store: tables, figures embedded, definitions present."""

from __future__ import annotations

import base64
import re

from quantbench.report import write_report
from quantbench.report.tables import latency_table, summary_table
from quantbench.store import Result, ResultStore


def _store(tmp_path):
    db = tmp_path / "r.db"
    rows = [
        Result("net", "d", "fp32", "torch", "top1", 90.0, "%", extra={"ci_low": 88.0, "ci_high": 92.0, "n_images": 500}),
        Result("net", "d", "fp32", "torch", "top5", 99.0, "%", extra={"ci_low": 98.0, "ci_high": 99.5, "n_images": 500}),
        Result("net", "d", "w8a8", "torch", "top1", 89.5, "%", extra={"ci_low": 87.0, "ci_high": 91.0, "n_images": 500}),
        Result("net", "d", "w8a8", "torch", "top1_drop", 0.5, "points", extra={"ci_low": 0.1, "ci_high": 0.9}),
        Result("net", "d", "fp32", "torch", "size_bytes", 4_000_000, "bytes"),
        Result("net", "d", "w8a8", "torch", "size_bytes", 1_000_000, "bytes"),
        Result("net", "d", "fp32", "torch", "macs", 40e6, "MACs", 1),
        Result("net", "d", "fp32", "torch", "latency_median_ms", 2.0, "ms", 1, {"p90_ms": 2.5, "threads": 2, "iterations": 50}),
        Result("net", "d", "fp32", "torch", "latency_median_ms", 20.0, "ms", 32, {"p90_ms": 21.0, "threads": 2, "iterations": 20}),
        Result("net", "d", "fp32", "torch", "epoch.train_loss", 1.0, "nats", extra={"epoch": 1}),
        Result("net", "d", "fp32", "torch", "epoch.train_loss", 0.5, "nats", extra={"epoch": 2}),
        Result("net", "d", "fp32", "torch", "train_time_s", 3.0, "s", extra={"epochs": 2}),
    ]
    with ResultStore(db) as store:
        run_id = store.start_run("run", config={"model": {"name": "net"}, "data": {"spec": "d"}},
                                 environment={"cpu_model": "TestCPU 9000", "logical_cores": 2})
        store.add_results(run_id, rows)
        store.finish_run(run_id)
    return db, run_id


def test_summary_and_latency_tables(tmp_path):
    db, run_id = _store(tmp_path)
    with ResultStore(db) as store:
        rows = store.query(run_id=run_id)
    header, body = summary_table(rows)
    by_method = {r[1]: r for r in body}
    assert by_method["fp32"][3] == "90.00 [88.00, 92.00]"
    assert by_method["w8a8"][header.index("drop vs FP32, points [95% CI]")] == "0.50 [0.10, 0.90]"
    assert by_method["w8a8"][header.index("size on disk")] == "1.00 MB"
    header, body = latency_table(rows)
    assert [r[3] for r in body] == ["1", "32"] and body[0][4] == "2.000" and body[0][5] == "2.500"


def test_html_embeds_valid_pngs_and_markdown_links_files(tmp_path):
    db, run_id = _store(tmp_path)
    html_path, md_path = write_report(db, run_id, tmp_path / "out")
    html = html_path.read_text()
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(imgs) >= 4
    for b64 in imgs:
        assert base64.b64decode(b64).startswith(b"\x89PNG\r\n\x1a\n")
    assert "TestCPU 9000" in html and "FLOPs = 2 x MACs" in html and "<script" not in html
    md = md_path.read_text()
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (tmp_path / "out" / link).is_file()
    assert "| net | w8a8 | torch |" in md
