"""Reports open with their answer; empty sections and information-free figures are left out; labels never
overlap; a sweep gets a pivot with one FP32 reference; a report that cannot be made is one line, no folder."""

from __future__ import annotations

import pytest

from quantbench.errors import QuantbenchError
from quantbench.report import write_report
from quantbench.report.answer import answer_lines
from quantbench.report.figures import make_figures
from quantbench.report.sweep import sweep_rows, sweep_view
from quantbench.store import Result, ResultStore


def _acc(method, top1, size, n=500):
    e = {"ci_low": top1 - 1.0, "ci_high": top1 + 1.0, "n_images": n, "split": "test"}
    return [Result("net", "d", method, "torch", "top1", top1, "%", extra=e),
            Result("net", "d", method, "torch", "size_bytes", size, "bytes")]


def _drop(method, v, lo, hi, p=0.01):
    return Result("net", "d", method, "torch", "top1_drop", v, "points",
                  extra={"ci_low": lo, "ci_high": hi, "p_value": p, "n_images": 500})


def _store(tmp_path, rows, kind="ptq", status="finished", db="a.db"):
    with ResultStore(tmp_path / db) as store:
        run_id = store.start_run(kind, config={"model": "net", "data": "d"}, environment={"cpu_model": "TestCPU"})
        store.add_results(run_id, rows)
        store.finish_run(run_id, status)
        return run_id, store.query(run_id=run_id)


def test_ptq_answer_states_drop_with_ci_and_size_ratio(tmp_path):
    _, rows = _store(tmp_path, [*_acc("fp32", 90.0, 1_070_000), *_acc("w8a8:mse", 89.7, 272_000),
                                _drop("w8a8:mse", 0.3, -0.1, 0.7, p=0.4), *_acc("w4a4:minmax", 60.0, 150_000),
                                _drop("w4a4:minmax", 30.0, 25.0, 35.0)])
    lines = answer_lines({"kind": "ptq"}, rows)
    assert lines[0] == "net (FP32) scores 90.0% top-1 [89.0, 91.0] on 500 test images of d (1.07 MB on disk)."
    assert lines[1].startswith("W8A8 (w8a8:mse) loses 0.3 points [-0.1, 0.7] of top-1 vs FP32 on the same 500 "
                               "images (not significant: McNemar p = 0.4) and is 3.9x smaller (272.00 kB vs 1.07 MB)")
    assert lines[2].startswith("W4A4 (w4a4:minmax) loses 30.0 points")


def test_bench_answer_names_the_fastest_and_gives_no_verdict_when_busy(tmp_path):
    def lat(engine, variant, ms, batch, share):
        return [Result("net", "d", variant, engine, "latency_median_ms", ms, "ms", batch,
                       {"threads": 2, "other_cpu_share": share}),
                Result("net", "d", variant, engine, "speedup_vs_torch_fp32", 1.0, "x", batch)]
    _, rows = _store(tmp_path, [*lat("torch", "fp32", 2.0, 1, 0.0), *lat("onnxruntime", "fp32", 0.42, 1, 0.0),
                                *lat("onnxruntime", "int8", 0.31, 1, 0.0), *lat("torch", "fp32", 9.0, 8, 0.6),
                                *lat("onnxruntime", "int8", 3.0, 8, 0.0)], kind="bench")
    one, eight = answer_lines({"kind": "bench"}, rows)
    assert one == ("Batch 1: the fastest deployment is onnxruntime int8 at 0.31 ms, 1.35x the speed of the fastest "
                   "FP32 (onnxruntime, 0.42 ms).")
    assert eight.startswith("Batch 8: no verdict") and "60%" in eight


def test_a_runs_own_answer_rows_open_the_report_escaped(tmp_path):
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    run_id, _ = _store(tmp_path, [*_acc("fp32", 90.0, 1_000_000),
                                  Result("net", "d", "fp32", "torch", "answer", None, "text",
                                         extra={"lines": ["Use w8a8:mse.", evil]})])
    html_path, md_path = write_report(tmp_path / "a.db", run_id, tmp_path / "out")
    html, md = html_path.read_text(), md_path.read_text()
    assert ("<section class='answer' id='answer'><p>Use w8a8:mse.</p><p>&lt;script&gt;alert(1)&lt;/script&gt;"
            "&lt;img src=x onerror=alert(2)&gt;</p></section>") in html
    assert "scores 90.0%" not in html  # the run's own answer replaces the generated one
    body = md.split("\n", 2)[2]
    assert body.startswith("> Use w8a8:mse.\n>\n> &lt;script&gt;") and "<script>" not in md and "<img src" not in md


def test_split_report_has_no_empty_results_table_and_no_information_free_figures(tmp_path):
    e = {"split": 1, "block": "b1", "qbins": 8, "companding": "none", "noise": "none", "n_images": 100,
         "codec": "range", "range": "sample"}
    run_id, rows = _store(tmp_path, [
        Result("net", "d", "split1-q8-none", "torch", "split.top1", 80.0, "%", extra=e),
        Result("net", "d", "split1-q8-none", "torch", "split.bpp", 0.5, "bits/pixel", extra=e),
        Result("net", "d", "fp32", "torch", "macs_batch", 1e6, "MACs", 4)], kind="split")
    html = write_report(tmp_path / "a.db", run_id, tmp_path / "out")[0].read_text()
    assert "Results: FP32 vs quantized" not in html and "Split computing" in html
    assert "split after block 1 with 8 levels (uniform), keeps 80.0% top-1 at 0.5 bits per pixel" in html
    names = {f.name for f in make_figures(rows)}
    assert names.isdisjoint({"macs_vs_batch", "split_accuracy", "split_bpp", "model_size"})  # one point each


def test_one_size_chart_and_every_caption_names_the_machine(tmp_path):
    _, rows = _store(tmp_path, [*_acc("fp32", 90.0, 1_000_000), *_acc("w8a8", 89.0, 250_000),
                                _drop("w8a8", 1.0, 0.5, 1.5), Result("net", "d", "fp32", "torch", "params", 250_000,
                                                                     "count")])
    figs = make_figures(rows, "Measured on TestCPU.")
    names = [f.name for f in figs]
    assert "model_size" not in names and "accuracy_vs_size" in names and "accuracy_drop" in names
    assert all(f.caption.endswith("Measured on TestCPU.") for f in figs)


def test_labels_of_many_close_points_never_overlap():
    from quantbench.report.figures.common import _annotate, _clusters, _plt

    assert _clusters([1.0, 1.01, 1.02, 100.0], [50.0, 50.1, 50.2, 90.0]) == [[0, 1, 2], [3]]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [10 + 0.9 * i for i in range(40)] + [500, 520]
    ys = [80 + 0.35 * (i % 7) for i in range(40)] + [90, 90.2]
    ax.plot(xs, ys, "o")
    ax.set_xscale("log")
    placed = _annotate(ax, xs, ys, [f"v{i}" for i in range(len(xs))])
    from matplotlib.text import Text

    fig.tight_layout()  # what _png does before saving: the layout must not move labels onto each other
    fig.canvas.draw()
    boxes = [Text.get_window_extent(a) for a in placed]  # the label itself, without its leader line
    assert len(boxes) >= 2
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    numbered = {int(n) for a in placed for n in a.get_text().split(",")}
    key = ax.texts[0].get_text()
    missing = set(range(1, len(xs) + 1)) - numbered
    assert not missing or "not numbered on the plot" in key  # every point is numbered or said not to be
    plt.close(fig)


def test_sweep_view_pivots_the_grid_with_one_fp32_reference(tmp_path):
    params, cells = [], []
    for i, (scheme, algo, top1) in enumerate((("w8a8", "minmax", 89.0), ("w8a8", "mse", 89.5),
                                              ("w4a8", "minmax", 80.0), ("w4a8", "mse", 85.0))):
        _, rows = _store(tmp_path, [*_acc("fp32", 90.0, 1_000_000), *_acc(f"{scheme}:{algo}", top1, 300_000),
                                    _drop(f"{scheme}:{algo}", 90.0 - top1, 0.0, 1.0)], db=f"c{i}.db")
        params.append({"model": "net", "method": f"{scheme}:{algo}", "calib_size": 64})
        cells.append(rows)
    sections, answer = sweep_view(params, cells)
    (name0, (_, fp32)), (name1, (header, body)) = sections
    assert name0 == "Sweep: FP32 reference" and len(fp32) == 1 and fp32[0][1].startswith("90.00")
    assert "scheme x algo" in name1 and header == ["scheme", "algo=minmax", "algo=mse"]
    assert body == [["w4a8", "80.00 (drop 10.00)", "85.00 (drop 5.00)"],
                    ["w8a8", "89.00 (drop 1.00)", "89.50 (drop 0.50)"]]
    assert answer[0].startswith("Across 4 cells over scheme, algo, the most accurate is scheme=w8a8, algo=mse")
    merged = sweep_rows(params, cells)
    assert sum(r["method"] == "fp32" and r["metric"] == "top1" for r in merged) == 1  # FP32 once, not per cell


def test_a_sweep_of_one_parameter_at_a_time_is_listed_per_cell_naming_only_what_each_sets(tmp_path):
    params, cells = [], []
    for i, (hyper, ptq, qat) in enumerate((({"alpha": 0.25}, 80.0, 84.0), ({"alpha": 1.0}, 88.0, 90.0),
                                          ({"beta": 0.5}, 85.0, 91.5), ({"t0": 4}, 86.0, 87.0))):
        fp32_bytes = 2_000_000 if "beta" in hyper else 1_000_000  # another model that ties on accuracy
        _, rows = _store(tmp_path, [*_acc("fp32", 90.0, fp32_bytes), *_acc("w8a8:mse", ptq, 300_000),
                                    *_acc("w8a8:qat", qat, 300_000), _drop("w8a8:mse", 90.0 - ptq, 0.0, 1.0),
                                    _drop("w8a8:qat", 90.0 - qat, -1.0, 1.0)], db=f"h{i}.db")
        params.append({"model": "phinet", "method": "w8a8", "hyper": hyper})
        cells.append(rows)
    sections, answer = sweep_view(params, cells)
    (_, (_, fp32)), (title, (header, body)) = sections
    assert [line[0] for line in fp32] == ["net [hyper.alpha=0.25] [hyper.alpha=1.0] [hyper.t0=4]",
                                          "net [hyper.beta=0.5]"]  # equal top-1, other file: not one model
    assert title == "Sweep: top-1 % (drop vs FP32, points) per cell"
    assert header == ["cell (parameters it sets)", "variant", "top-1 % (drop vs FP32, points)"]
    assert [line[0] for line in body] == ["hyper.alpha=0.25"] * 2 + ["hyper.alpha=1.0"] * 2 + [
        "hyper.beta=0.5"] * 2 + ["hyper.t0=4"] * 2
    assert "None" not in repr(body) and "None" not in " ".join(answer)
    # the best point is a QAT model: the answer names the variant, not only the cell
    assert answer[0].startswith("Across 4 cells over hyper.alpha, hyper.beta, hyper.t0, the most accurate is "
                                "hyper.beta=0.5 (w8a8:qat / torch) with 91.50% top-1, 1.50 points above FP32")


def test_a_sweep_that_timed_models_opens_with_the_fastest_deployment_of_each(tmp_path):
    def lat(model, engine, variant, batch, ms, busy=0.0):
        return Result(model, "d", variant, engine, "latency_median_ms", ms, "ms", batch,
                      {"threads": 2, "other_cpu_share": busy, "median_ci_low_ms": ms * 0.98,
                       "median_ci_high_ms": ms * 1.02})

    cells = []
    for i, (model, busy) in enumerate((("resnet18", 0.0), ("vgg16", 0.5))):
        _, rows = _store(tmp_path, [lat(model, "onnxruntime", "fp32", 1, 20.0, busy),
                                    lat(model, "openvino", "int8", 1, 5.0, busy),
                                    lat(model, "openvino", "int8", 8, 30.0, busy),
                                    Result(model, "d", "int8", "openvino", "speedup_vs_torch_fp32", 4.0, "x", 1)],
                         kind="bench", db=f"b{i}.db")
        cells.append(rows)
    _, answer = sweep_view([{"model": "resnet18"}, {"model": "vgg16"}], cells)
    assert answer == ["resnet18, batch 1: the fastest deployment is openvino int8 at 5 ms, 4.00x the speed of the "
                      "fastest FP32 (onnxruntime, 20 ms).",
                      "vgg16, batch 1: no verdict - other processes used up to 50% of the CPU while timing; rerun "
                      "on a quiet machine before choosing an engine."]


def test_a_report_that_cannot_be_made_is_one_line_and_leaves_no_folder(tmp_path):
    run_id, _ = _store(tmp_path, [], status="failed")
    with pytest.raises(QuantbenchError, match="failed before storing any result"):
        write_report(tmp_path / "a.db", run_id, tmp_path / "nope" / "deeper")
    assert not (tmp_path / "nope").exists()
    run_id, _ = _store(tmp_path, [], kind="lint", db="l.db")  # finished, nothing measured: says so
    html = write_report(tmp_path / "l.db", run_id, tmp_path / "lint")[0].read_text()
    assert "This lint run stored no measurements" in html


def test_bench_answer_claims_no_speed_up_within_the_timing_noise(tmp_path):
    def lat(engine, variant, ms, lo, hi):
        return [Result("net", "d", variant, engine, "latency_median_ms", ms, "ms", 1,
                       {"threads": 2, "other_cpu_share": 0.0, "median_ci_low_ms": lo, "median_ci_high_ms": hi}),
                Result("net", "d", variant, engine, "speedup_vs_torch_fp32", 1.0, "x", 1)]
    _, rows = _store(tmp_path, [*lat("onnxruntime", "fp32", 0.42, 0.38, 0.47),
                                *lat("onnxruntime", "int8", 0.40, 0.36, 0.45)], kind="bench")
    (one,) = answer_lines({"kind": "bench"}, rows)
    assert "within the timing noise of the fastest FP32" in one and "no measurable speed-up" in one


def test_the_table_an_answer_was_read_from_comes_right_under_it(tmp_path):
    table = {"title": "Every deployment measured (* = on the Pareto front)", "header": ["", "method", "ms"],
             "rows": [["*", "w8a8:mse", "1.2"], ["", "fp32", "<b>3</b>"]]}
    run_id, _ = _store(tmp_path, [Result("net", "d", "fp32", "torch", "top1", 90.0, "%", None, {}),
                                  Result("net", "d", "recommend", "", "answer", None, "text", None,
                                         {"lines": ["Use w8a8:mse."], "table": table})], kind="recommend")
    html_path, md_path = write_report(tmp_path / "a.db", run_id, tmp_path / "rep")
    md, html = md_path.read_text(), html_path.read_text()
    assert md.index("Use w8a8:mse.") < md.index("Pareto front") < md.index("Results: FP32 vs quantized")
    assert "&lt;b&gt;3&lt;/b&gt;" in html and "<b>3</b>" not in html  # cells are text, escaped
