"""The engine benchmark library: planning, derived ratios, findings, store rows, peaks, isolation."""

from __future__ import annotations

import math

import pytest

from quantbench.errors import QuantbenchError
from quantbench.experiments.bench import BenchSpec, bench_rows, plan_jobs, run_bench
from quantbench.measure.macs import count_macs
from quantbench.measure.peaks import machine_peaks, peak_precision
from quantbench.models import build_model
from quantbench.report.tables import bench_records, bench_table, speed_findings
from quantbench.store import ResultStore

FAST = {"min_time_s": 0.0, "min_iters": 3, "warmup": 1, "threads": 1}


@pytest.fixture(scope="module")
def lenet_bench():
    spec = BenchSpec(model="lenet", engines=("torch", "onnxruntime"), variants=("fp32", "int8"), batch_sizes=(1, 4),
                     isolate=False, **FAST)
    return run_bench(spec, log=lambda m: None, peaks=False)


def test_plan_always_starts_with_torch_fp32_reference():
    jobs, skipped = plan_jobs(("onnxruntime",), ("int8",))
    assert jobs == [("torch", "fp32"), ("onnxruntime", "int8")]
    assert skipped == []


def test_plan_all_covers_every_installed_engine_variant():
    jobs, _ = plan_jobs(("all",), ())
    engines = {e for e, _ in jobs}
    assert {"torch", "onnxruntime"} <= engines
    assert ("onnxruntime", "dynamic") in jobs and ("onnxruntime", "fp32") in jobs


@pytest.mark.parametrize("engines, variants, needle", [
    (("tensorrt",), (), "unknown engine 'tensorrt'"),
    (("onnxruntime",), ("int4",), "unknown variant 'int4'"),
    (("torch-int8",), ("fp32",), "offers none of the variants fp32"),
])
def test_plan_rejects_bad_names(engines, variants, needle):
    with pytest.raises(QuantbenchError, match=needle):
        plan_jobs(engines, variants)


def test_engine_not_installed_is_an_error_when_named_and_skipped_under_all(absent_engine):
    with pytest.raises(QuantbenchError, match="'absent-engine' is not installed.*quantbench_no_such_package"):
        plan_jobs((absent_engine,), ())
    jobs, skipped = plan_jobs(("all",), ())
    assert all(e != absent_engine for e, _ in jobs)
    assert any(s["engine"] == absent_engine and "not installed" in s["reason"] for s in skipped)


@pytest.mark.parametrize("spec, needle", [
    (BenchSpec(model="lenet", batch_sizes=(0,)), "batch size must be an integer >= 1, got 0"),
    (BenchSpec(model="lenet", batch_sizes=()), "at least one batch size"),
    (BenchSpec(model="vgg11_cifar", input_shape=(3, 8, 8), engines=("torch",)), "cannot take a 3x8x8 input"),
    (BenchSpec(model="lenet", threads=0), "--threads must be an integer >= 1"),
    (BenchSpec(model="lenet", quantized="/nonexistent/x.qbm", engines=("onnxruntime",)), "no such file"),
])
def test_bad_specs_fail_before_timing(spec, needle):
    with pytest.raises(QuantbenchError, match=needle):
        run_bench(spec, log=lambda m: None, peaks=False)


def test_records_have_consistent_derived_ratios(lenet_bench):
    res = lenet_bench
    assert res.per_image_macs == count_macs(build_model("lenet"), (1, 8, 8)).per_image_macs
    assert res.input_shape == (1, 8, 8)
    cells = {(r["engine"], r["variant"], r["batch"]): r for r in res.records}
    assert set(cells) == {(e, v, b) for e, v in [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
                          for b in (1, 4)}
    for (engine, _variant, b), r in cells.items():
        ordered = r["median_ms"] <= r["p90_ms"]  # order statistics of the same samples, not a speed
        assert ordered
        assert r["macs_batch"] == res.per_image_macs * b
        assert math.isclose(r["gmacs_per_s"], r["macs_batch"] / (r["median_ms"] / 1e3) / 1e9)
        assert math.isclose(r["throughput_ips"], b / (r["median_ms"] / 1e3))
        ref = cells[("torch", "fp32", b)]["median_ms"]
        assert math.isclose(r["speedup_vs_torch_fp32"], ref / r["median_ms"])
        same = cells[(engine, "fp32", b)]["median_ms"]
        assert math.isclose(r["speedup_vs_fp32"], same / r["median_ms"])
        assert r["peak_rss_bytes"] is None  # in-process: a high-water mark is not attributable
        assert r["fraction_of_peak"] is None  # peaks not measured in this test
        assert r["threads"] == 1
    assert cells[("onnxruntime", "int8", 1)]["model_bytes"] < cells[("onnxruntime", "fp32", 1)]["model_bytes"]
    assert "seeded random images" in res.quantized_from


def test_rows_round_trip_through_the_store(tmp_path, lenet_bench):
    rows = bench_rows(lenet_bench, "input:1x8x8")
    with ResultStore(tmp_path / "b.db") as store:
        run = store.start_run("bench", config={}, environment={})
        store.add_results(run, rows)
        stored = store.query(run_id=run)
    cells = bench_records(stored)
    assert len(cells) == len(lenet_bench.records)
    orig = {(r["engine"], r["variant"], r["batch"]): r for r in lenet_bench.records}
    for c in cells:
        o = orig[(c["engine"], c["variant"], c["batch"])]
        assert math.isclose(c["median_ms"], o["median_ms"]) and math.isclose(c["speedup_vs_torch_fp32"],
                                                                              o["speedup_vs_torch_fp32"])
    header, body = bench_table(stored)
    assert len(body) == len(cells) and "x torch fp32" in header
    macs = [r for r in stored if r["metric"] == "macs_batch"]
    assert sorted(r["batch"] for r in macs) == [1, 4]


def _rec(engine, variant, batch, med, same, ref):
    return {"model": "m", "engine": engine, "variant": variant, "batch": batch, "median_ms": med,
            "speedup_vs_fp32": same / med, "speedup_vs_torch_fp32": ref / med}


def test_findings_say_plainly_when_quantized_is_slower():
    recs = [_rec("torch", "fp32", 1, 10.0, 10.0, 10.0), _rec("ort", "fp32", 1, 2.0, 2.0, 10.0),
            _rec("ort", "dynamic", 1, 8.0, 2.0, 10.0), _rec("ort", "int8", 1, 1.0, 2.0, 10.0),
            _rec("torch-int8", "int8", 1, 12.0, 10.0, 10.0)]
    text = speed_findings(recs)
    slower = [t for t in text if "SLOWER" in t]
    assert len(slower) == 2
    assert any(t.startswith("m ort dynamic is SLOWER than ort fp32 at batch 1 (0.25x") for t in slower)
    assert any("torch-int8 int8 is SLOWER than torch fp32" in t for t in slower)
    assert not any("ort int8 is SLOWER" in t for t in text)
    assert any("fastest is ort int8" in t and "10.00x" in t for t in text)
    # against the best FP32 deployment (ort fp32, 2 ms), not eager torch (10 ms): 2x, not 10x
    assert any("fastest quantized model (ort int8, 1 ms) is 2.00x the fastest FP32 one (ort, 2 ms)" in t
               for t in text)
    assert not any("GEMM peak" in t for t in text)


def test_findings_flag_rates_above_the_measured_peak():
    recs = [{**_rec("ov", "fp32", 1, 2.0, 2.0, 10.0), "fraction_of_peak": 1.12},
            {**_rec("torch", "fp32", 1, 10.0, 10.0, 10.0), "fraction_of_peak": 0.3}]
    (line,) = [t for t in speed_findings(recs) if "GEMM peak" in t]
    assert line.startswith("m ov fp32 ran above") and "torch" not in line


def test_machine_peaks_measures_each_native_precision():
    peaks = machine_peaks(threads=1, size=64, min_time_s=0.0)
    assert {"fp32", "int8"} <= set(peaks)
    for p in peaks.values():
        assert p.gmacs_per_s > 0 and p.threads == 1
        assert math.isclose(p.gmacs_per_s, 64**3 / (p.median_ms / 1e3) / 1e9)
    assert peak_precision("dynamic") == "int8" and peak_precision("fp32") == "fp32"
    with pytest.raises(QuantbenchError, match="size must be >= 16"):
        machine_peaks(threads=1, size=8)


def test_isolated_job_reports_its_own_peak_rss():
    spec = BenchSpec(model="lenet", engines=("torch",), variants=("fp32",), batch_sizes=(1,), isolate=True, **FAST)
    res = run_bench(spec, log=lambda m: None, peaks=False)
    assert res.skipped == []
    (rec,) = res.records
    # a fresh interpreter with torch imported: well above 50 MB, well below the 24 GiB machine
    assert 50e6 < rec["peak_rss_bytes"] < 8e9


def test_study_file_is_a_bench_sweep_with_one_cell_per_model(tmp_path):
    from quantbench.sweep import expand, load_sweep

    f = tmp_path / "s.yaml"
    f.write_text("name: t\nkind: bench\nengines: [torch]\nbatch_sizes: [1, 2]\nthreads: 1\n"
                 "cells:\n  - {model: lenet}\n  - {model: resnet20, input_shape: 3x40x40, batch_sizes: [4]}\n")
    sweep = load_sweep(f)
    cells = expand(sweep)
    assert sweep.name == "t" and [c.params["model"] for c in cells] == ["lenet", "resnet20"]
    assert cells[0].params["batch_sizes"] == [1, 2] and cells[1].params["batch_sizes"] == [4]
    f.write_text("kind: bench\ncells: [{model: lenet}]\nbatchsizes: [1]\n")
    with pytest.raises(QuantbenchError, match=r"s.yaml: unknown key 'batchsizes'"):
        load_sweep(f)
    f.write_text("kind: bench\ncells:\n  - {model: lenet, size: 3}\n")
    with pytest.raises(QuantbenchError, match=r"unknown key 'size'"):
        load_sweep(f)
    f.write_text("kind: bench\ncells: [{engines: [nosuchengine]}]\n")
    with pytest.raises(QuantbenchError, match="nosuchengine"):
        load_sweep(f)


# ----------------------------------------------------------------------------- verdicts the numbers can carry


def _cell(engine, variant, med, lo, hi, same, ref, share=0.01):
    """A bench record with its median's 95% interval and the machine load while it was timed."""
    return {**_rec(engine, variant, 1, med, same, ref), "median_ci_low_ms": lo, "median_ci_high_ms": hi,
            "other_cpu_share": share}


def _cells(share_of_int8=0.01):
    return [_cell("torch", "fp32", 10.0, 9.8, 10.2, 10.0, 10.0), _cell("ort", "fp32", 2.0, 1.9, 2.1, 2.0, 10.0),
            _cell("ort", "dynamic", 8.0, 7.9, 8.1, 2.0, 10.0),  # apart from ort fp32: a verdict
            _cell("ort", "int8", 1.0, 0.9, 1.1, 2.0, 10.0, share=share_of_int8)]


def test_a_busy_machine_gives_one_warning_and_no_verdict():
    from quantbench.experiments.bench_findings import bench_findings as findings

    quiet = findings(_cells())
    assert any("SLOWER" in t for t in quiet) and any("fastest is ort int8" in t for t in quiet)
    text = findings(_cells(share_of_int8=0.77))
    assert len(text) == 1 and "\n" not in text[0]
    assert text[0].startswith("WARNING: busy machine") and "up to 77%" in text[0] and "1 of 4 cells" in text[0]
    assert not any(w in t for t in text for w in ("SLOWER", "fastest", "no measurable", "PyTorch eager"))


def test_the_report_and_the_console_agree_on_busy(tmp_path):
    from quantbench.experiments.bench import BenchResult, bench_rows
    from quantbench.experiments.bench_findings import bench_findings as findings
    from quantbench.report.tables import busy_machine_lines

    recs = []
    for c in _cells(share_of_int8=0.3):
        lat = {"median_ms": c["median_ms"], "p90_ms": c["median_ms"] * 1.1, "mean_ms": c["median_ms"],
               "min_ms": c["median_ms"], "std_ms": 0.0, "iterations": 10, "warmup": 1, "threads": 1, "batch_size": 1,
               "throughput_ips": 1000.0 / c["median_ms"], "samples_ms": [], "other_cpu_share": c["other_cpu_share"],
               "median_ci_low_ms": c["median_ci_low_ms"], "median_ci_high_ms": c["median_ci_high_ms"]}
        recs.append({**c, "latency": lat, "gmacs_per_s": None, "fraction_of_peak": None, "peak_rss_bytes": None,
                     "model_bytes": None, "info": {}, "peak_precision": "fp32"})
    res = BenchResult("m", (1, 8, 8), 1000, recs, [], {}, "test", params=10, fp32_size_bytes=100)
    with ResultStore(tmp_path / "b.db") as store:
        run = store.start_run("bench", config={}, environment={})
        store.add_results(run, bench_rows(res, "input:1x8x8"))
        rows = store.query(run_id=run)
    medians = [r for r in rows if r["metric"] == "latency_median_ms"]
    assert {r["extra"]["median_ci_high_ms"] for r in medians} == {10.2, 2.1, 8.1, 1.1}  # stored with the row
    (report_line,) = busy_machine_lines(rows)
    (console_line,) = findings(recs)
    assert "up to 30%" in report_line and "up to 30%" in console_line


def test_overlapping_intervals_say_no_measurable_difference():
    from quantbench.experiments.bench_findings import bench_findings as findings

    cells = _cells()
    cells[2] = _cell("ort", "dynamic", 2.1, 1.95, 2.3, 2.0, 10.0)  # slower median, overlapping interval
    text = findings(cells)
    assert not any("dynamic is SLOWER" in t for t in text)
    (line,) = [t for t in text if t.startswith("m ort dynamic vs ort fp32")]
    assert "no measurable difference" in line and "2.1 ms [1.95, 2.3]" in line and "2 ms [1.9, 2.1]" in line
    # the fastest int8 and the fastest fp32 overlap: the fastest cell is named, the ratio is not a verdict
    cells[3] = _cell("ort", "int8", 1.95, 1.8, 2.05, 2.0, 10.0)
    text = findings(cells)
    assert any("fastest is ort int8" in t for t in text)
    assert not any("what quantization buys" in t for t in text)
    assert any("fastest quantized model (ort int8" in t and "no measurable difference" in t for t in text)
    # nothing measurably faster than eager PyTorch: no "fastest is" at all
    flat = [_cell("torch", "fp32", 10.0, 9.0, 11.0, 10.0, 10.0), _cell("ort", "int8", 9.5, 9.2, 10.4, 10.0, 10.0)]
    text = findings(flat)
    assert not any("fastest is" in t for t in text)
    assert any("and PyTorch eager fp32" in t and "no measurable difference" in t for t in text)


def test_bench_prints_each_median_with_its_interval_and_the_busy_warning(capsys):
    from types import SimpleNamespace

    from quantbench.cli.experiment_verbs import EXPERIMENT_VERBS
    from quantbench.experiments.bench import public_record
    from quantbench.experiments.bench_findings import bench_findings as findings

    recs = [{**c, "p90_ms": c["median_ms"] * 1.2, "throughput_ips": 1.0, "gmacs_per_s": None,
             "fraction_of_peak": None, "peak_rss_bytes": None} for c in _cells(share_of_int8=0.65)]
    record = {"model": "m", "input_shape": [1, 8, 8], "per_image_macs": 1000, "quantized_from": "test",
              "records": [public_record(r) for r in recs], "skipped": [], "peaks": {}, "findings": findings(recs)}
    _kind, printer = EXPERIMENT_VERBS["bench"]
    assert printer(None, SimpleNamespace(record=record)) == 0
    out = capsys.readouterr().out
    assert "median ms [95% CI]" in out and "10.000 [9.800, 10.200]" in out and "1.000 [0.900, 1.100]" in out
    assert "WARNING: busy machine: other processes used up to 65%" in out
    assert "SLOWER" not in out and "fastest" not in out
