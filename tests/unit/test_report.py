"""Reports from the store: tables, figures embedded, definitions present."""

from __future__ import annotations

import base64
import re

from quantbench.report import write_report
from quantbench.report.figures import accuracy_vs_latency, make_figures, pareto_front, split_regimes
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


# ----------------------------------------------------------------------------- figure families


def _rows(tmp_path, results, db="f.db"):
    """Store ``results`` as one run and read them back as the report sees them."""
    with ResultStore(tmp_path / db) as store:
        run_id = store.start_run("run", config={}, environment={})
        store.add_results(run_id, results)
        return store.query(run_id=run_id)


def _acc(method, top1, loss, size, engine="torch", split="test"):
    e = {"ci_low": top1 - 1.0, "ci_high": min(top1 + 1.0, 100.0), "n_images": 300, "split": split}
    pre = "train_" if split == "train" else ""
    out = [Result("net", "d", method, engine, f"{pre}top1", top1, "%", extra=e),
           Result("net", "d", method, engine, f"{pre}top5", 99.0, "%", extra=e),
           Result("net", "d", method, engine, f"{pre}loss", loss, "nats", extra={"n_images": 300, "split": split})]
    if size is not None:
        out.append(Result("net", "d", method, engine, "size_bytes", size, "bytes"))
    return out


def _lat(method, ms, batch, engine="torch"):
    return Result("net", "d", method, engine, "latency_median_ms", ms, "ms", batch, {"threads": 2, "p90_ms": ms})


def test_pareto_front_on_known_points():
    pts = [(4.0, 90.0), (1.0, 80.0), (2.0, 85.0), (3.0, 84.0), (2.0, 70.0), (5.0, 89.0), (2.0, 85.0)]
    # (3, 84) is dominated by (2, 85); (2, 70) by (2, 85); (5, 89) by (4, 90); (2, 85) twice: both kept
    assert pareto_front(pts) == [1, 2, 6, 0]
    assert pareto_front([(1.0, 1.0)]) == [0]
    assert pareto_front([]) == []
    # a cheaper point that is as accurate dominates a costlier one
    assert pareto_front([(2.0, 50.0), (1.0, 50.0)]) == [1]


def test_new_figures_appear_with_captions(tmp_path):
    rows = _rows(tmp_path, [
        *_acc("fp32", 95.0, 0.20, 400_000), *_acc("w8a8", 94.8, 0.22, 100_000), *_acc("w4a8", 90.0, 0.50, 60_000),
        *_acc("w4a4", 80.0, 0.90, 70_000),  # dominated: bigger and worse than w4a8
        *_acc("fp32", 99.5, 0.05, None, split="train"),
        Result("net", "d", "fp32", "torch", "params", 100_000, "count"),
        _lat("fp32", 2.0, 1), _lat("fp32", 10.0, 8), _lat("w8a8", 1.0, 1), _lat("w8a8", 4.0, 8),
        _lat("w4a8", 3.0, 8),  # no batch-1 latency: left out of the batch-1 front
        Result("net", "d", "fp32", "torch", "epoch.val_loss", 0.9, "nats", extra={"epoch": 1}),
        Result("net", "d", "fp32", "torch", "epoch.val_top1", 70.0, "%", extra={"epoch": 1}),
        Result("net", "d", "fp32", "torch", "epoch.val_loss", 0.3, "nats", extra={"epoch": 2}),
        Result("net", "d", "fp32", "torch", "epoch.val_top1", 93.0, "%", extra={"epoch": 2}),
    ])
    figs = {f.name: f for f in make_figures(rows)}
    for name in ("accuracy_vs_size", "accuracy_vs_latency", "accuracy_vs_loss", "parameters"):
        assert name in figs and figs[name].png.startswith(b"\x89PNG")
    size_cap = figs["accuracy_vs_size"].caption
    assert "w4a8 / torch" in size_cap and "w4a4" not in size_cap  # the dominated variant is not named on the front
    lat_cap = figs["accuracy_vs_latency"].caption
    assert "batch of 8 image" in lat_cap and "2 thread" in lat_cap and "engine(s) torch" in lat_cap
    assert "w4a8 / torch, w8a8 / torch, fp32 / torch." in lat_cap  # all on the front: each faster one is less accurate
    assert "nats" in figs["accuracy_vs_loss"].caption and "per training epoch" in figs["accuracy_vs_loss"].caption
    assert "bits on disk per parameter" in figs["parameters"].caption and "100.00 k" in figs["parameters"].caption
    # train accuracy does not leak into test-accuracy figures, but is in the FP32-vs-quantized table
    assert "300 test images" in size_cap
    header, body = summary_table(rows)
    fp32 = next(r for r in body if r[1] == "fp32")
    assert fp32[header.index("train top-1 %")] == "99.50" and fp32[header.index("top-1 % [95% CI]")].startswith("95.00")
    assert next(r for r in body if r[1] == "w8a8")[header.index("train top-1 %")] == "–"
    assert fp32[header.index("loss (nats)")] == "0.2000"


def test_latency_pareto_uses_the_smallest_common_batch(tmp_path):
    rows = _rows(tmp_path, [*_acc("fp32", 95.0, 0.2, None), *_acc("int8", 94.0, 0.3, None),
                            _lat("fp32", 10.0, 8), _lat("int8", 4.0, 8), _lat("fp32", 2.0, 32), _lat("int8", 1.0, 4)])
    fig = accuracy_vs_latency(rows)
    assert fig is not None and "batch of 8 image" in fig.caption
    rows = _rows(tmp_path, [*_acc("fp32", 95.0, 0.2, None), *_acc("int8", 96.0, 0.3, None), _lat("fp32", 2.0, 1),
                            _lat("int8", 1.0, 1), _lat("fp32", 9.0, 8), _lat("int8", 3.0, 8)], db="b1.db")
    fig = accuracy_vs_latency(rows)
    assert fig is not None and "batch of 1 image" in fig.caption
    assert "accurate): int8 / torch. Up" in fig.caption  # faster AND more accurate: fp32 is dominated


def test_figures_absent_without_their_data(tmp_path):
    # one variant: no front to draw; latency of a variant without accuracy joins nothing
    rows = _rows(tmp_path, [*_acc("fp32", 95.0, 0.2, 400_000), _lat("fp32", 2.0, 1), _lat("int8", 1.0, 1, "ort")])
    names = {f.name for f in make_figures(rows)}
    for name in ("accuracy_vs_size", "accuracy_vs_latency", "accuracy_vs_loss", "parameters", "split_regimes",
                 "split_rate_accuracy"):
        assert name not in names
    header, _ = summary_table(rows)
    assert "train top-1 %" not in header
    assert make_figures([]) == []


def _split(split, q, comp, noise, top1, bpp):
    e = {"split": split, "block": f"b{split}", "qbins": q, "companding": comp, "noise": noise, "n_images": 100,
         "codec": "range-perchannel", "range": "sample"}
    m = f"split{split}-q{q}-{comp}" + ("" if noise == "none" else f"-{noise}")
    return [Result("net", "d", m, "torch", "split.top1", top1, "%", extra=e),
            Result("net", "d", m, "torch", "split.bpp", bpp, "bits/pixel", extra=e)]


def test_split_regime_and_companding_figures(tmp_path):
    rows = _rows(tmp_path, [*_split(1, 4, "none", "none", 60.0, 0.5), *_split(1, 8, "none", "none", 80.0, 0.9),
                            *_split(1, 4, "mulaw", "none", 70.0, 0.55), *_split(1, 8, "mulaw", "none", 82.0, 0.95)])
    names = {f.name: f for f in make_figures(rows)}
    assert "split_rate_accuracy" in names and "split_regimes" not in names  # no fine-tuned model yet
    assert "mu-law" in names["split_rate_accuracy"].caption and "bits per input pixel" in names[
        "split_rate_accuracy"].caption
    rows = _rows(tmp_path, [*_split(1, 4, "none", "none", 60.0, 0.5), *_split(1, 4, "none", "noise", 75.0, 0.5),
                            *_split(1, 4, "none", "no-noise", 65.0, 0.5)], db="n.db")
    fig = split_regimes(rows)
    assert fig is not None and "without noise" in fig.caption and "U(-step/2, step/2)" in fig.caption


def test_latency_of_a_deployed_variant_joins_its_simulated_accuracy(tmp_path):
    # the runner times w8a8 on torch-int8; its accuracy row is the torch simulation of the same scales
    rows = _rows(tmp_path, [*_acc("fp32", 95.0, 0.2, None), *_acc("w8a8", 94.0, 0.3, None), *_acc("w4a8", 90.0, 0.5, None),
                            _lat("fp32", 2.0, 1), _lat("w8a8", 0.5, 1, "torch-int8")])
    fig = accuracy_vs_latency(rows)
    assert fig is not None and "torch, torch-int8" in fig.caption and "w8a8 / torch-int8, fp32 / torch." in fig.caption
    assert "w4a8" not in fig.caption  # no latency for it: not on the plot


def test_latencies_timed_on_a_busy_machine_get_a_warning_and_a_column(tmp_path):
    from quantbench.report.tables import busy_machine_lines, latency_table

    quiet = Result("net", "d", "fp32", "torch", "latency_median_ms", 2.0, "ms", 1,
                   {"threads": 2, "p90_ms": 2.1, "other_cpu_share": 0.02})
    busy = Result("net", "d", "w8a8", "torch-int8", "latency_median_ms", 900.0, "ms", 1,
                  {"threads": 2, "p90_ms": 1800.0, "other_cpu_share": 0.55})
    rows = _rows(tmp_path, [quiet, busy])
    (line,) = busy_machine_lines(rows)
    assert line.startswith("1 of 2 latencies") and "up to 55%" in line
    assert busy_machine_lines(_rows(tmp_path, [quiet], db="q.db")) == []
    header, body = latency_table(rows)
    col = header.index("others' CPU % while timing")
    assert sorted(r[col] for r in body) == ["2", "55"]


def test_the_busy_machine_warning_and_the_results_come_before_the_figures(tmp_path):
    busy = Result("net", "d", "fp32", "torch", "latency_median_ms", 900.0, "ms", 1,
                  {"threads": 2, "p90_ms": 1800.0, "other_cpu_share": 0.55})
    with ResultStore(tmp_path / "w.db") as store:
        run_id = store.start_run("run", config={}, environment={})
        store.add_results(run_id, [*_acc("fp32", 95.0, 0.2, 400_000), *_acc("w8a8", 94.0, 0.3, 100_000), busy])
    html_path, md_path = write_report(tmp_path / "w.db", run_id, tmp_path / "out")
    for text in (md_path.read_text(), html_path.read_text()):
        order = [text.index(h) for h in ("Measurement warning", "Results: FP32 vs quantized", "Figures",
                                         "Latency and throughput")]
        assert order == sorted(order)


def test_pareto_figures_plot_a_model_shared_by_sweep_cells_once(tmp_path):
    from quantbench.report.figures import accuracy_vs_size

    rows = []
    for i, (method, top1, size) in enumerate((("w8a8", 94.0, 100_000), ("w4a8", 90.0, 60_000))):
        cell = _rows(tmp_path, [*_acc("fp32", 95.0, 0.2, 400_000), *_acc(method, top1, 0.3, size)], db=f"c{i}.db")
        rows += [{**r, "run_id": f"cell{i}"} for r in cell]
    fig = accuracy_vs_size(rows)
    assert fig is not None and fig.caption.count("fp32 / torch") == 1  # one FP32 point, on the front
