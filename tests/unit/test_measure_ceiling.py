"""Measured GEMM ceilings: the hand-written ONNX graphs are valid and compute what they claim; the summary's
structure and units; the numpy fall-back without onnxruntime. No timing assertions."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from quantbench import device_gemm
from quantbench.errors import QuantbenchError
from quantbench.measure.ceiling import describe_ceilings, measure_ceilings

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_hand_written_graphs_pass_the_onnx_checker_and_compute_the_product(precision):
    model, feeds = device_gemm.gemm_model(24, 40, 8, precision)
    onnx.checker.check_model(onnx.load_from_string(model), full_check=True)
    b = onnx.numpy_helper.to_array(onnx.load_from_string(model).graph.initializer[0])
    (y,) = device_gemm.ort_runner(model, feeds, 1)()
    want = feeds["A"].astype(np.int64) @ b.astype(np.int64) if precision == "int8" else feeds["A"] @ b
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
    model, feeds = device_gemm.conv_model(4, 6, 9, precision)
    onnx.checker.check_model(onnx.load_from_string(model), full_check=True)
    (y,) = device_gemm.ort_runner(model, feeds, 1)()
    assert y.shape == (1, 6, 9, 9) and y.dtype == (np.uint8 if precision == "int8" else np.float32)


def test_measure_ceilings_structure_units_and_threads():
    c = measure_ceilings(threads=1, budget_s=0.01)
    assert c["threads"] == 1 and c["runtime"].startswith("onnxruntime") and "2 x gmacs_per_s" in c["convention"]
    kernels = {(k["kernel"], k["precision"]) for k in c["kernels"]}
    assert len(kernels) == 2 * (len(device_gemm.GEMMS) + 1)  # every shape in both precisions, plus the conv
    for k in c["kernels"]:
        assert k["gmacs_per_s"] > 0 and k["gops_per_s"] == pytest.approx(2 * k["gmacs_per_s"]) and k["iterations"] >= 3
    for prec in ("fp32", "int8"):
        best = max(k["gmacs_per_s"] for k in c["kernels"] if k["precision"] == prec)
        assert c[prec]["gmacs_per_s"] == best and c[prec]["gops_per_s"] == pytest.approx(2 * best)
    assert c["int8_over_fp32"] == pytest.approx(c["int8"]["gmacs_per_s"] / c["fp32"]["gmacs_per_s"])
    line = describe_ceilings(c)
    assert "GFLOP/s" in line and "int8/fp32" in line and "1 threads" in line


def test_without_onnxruntime_fp32_falls_back_to_numpy_and_int8_is_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    calls = []

    def timer(fn, min_time_s):
        calls.append(min_time_s)
        fn()
        return {"median_ms": 1.0, "iterations": 3}

    c = device_gemm.gemm_ceilings(2, 0.3, timer)
    assert c["runtime"].startswith("numpy") and c["threads"] is None and c["int8"] is None
    assert c["int8_over_fp32"] is None and c["skipped"][0]["reason"] == "onnxruntime is not installed"
    assert {k["op"] for k in c["kernels"]} == {"numpy matmul"} and len(calls) == len(device_gemm.GEMMS)
    assert sum(calls) == pytest.approx(0.3)  # the budget is shared by the kernels
    assert c["fp32"]["gmacs_per_s"] == pytest.approx(max(m * k * n for m, k, n in device_gemm.GEMMS) / 1e6)
    assert "BLAS default threads" in describe_ceilings(c)


@pytest.mark.parametrize("kw, needle", [({"budget_s": -1.0}, "budget_s"), ({"threads": 0}, "threads")])
def test_bad_arguments_are_one_line_errors(kw, needle):
    with pytest.raises(QuantbenchError, match=needle) as e:
        measure_ceilings(**kw)
    assert "\n" not in str(e.value)
