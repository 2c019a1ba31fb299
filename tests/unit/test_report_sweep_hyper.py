"""Sweep figures against a swept numeric hyper-parameter (PhiNet's alpha / beta / t0 / num_layers)."""

from __future__ import annotations

from quantbench.report.figures import make_figures
from quantbench.report.figures.hyper import numeric_keys, sweep_vs_hyper
from quantbench.report.sweep import sweep_rows


def _cell_rows(top1: float, size: float, ms: float) -> list[dict]:
    def row(method, metric, value, batch=None, engine="torch"):
        return {"model": "phinet", "method": method, "engine": engine, "metric": metric, "batch": batch,
                "value": value, "unit": "", "extra": {"n_images": 100}}

    return [row("fp32", "top1", top1 + 1), row("w8a8-qat", "top1", top1), row("fp32", "size_bytes", 4 * size),
            row("w8a8-qat", "size_bytes", size), row("fp32", "macs", 1e6 * size / 1e5, 1),
            row("fp32", "latency_median_ms", ms, 1), row("w8a8-qat", "latency_median_ms", ms / 2, 1, "torch-int8"),
            row("fp32", "latency_median_ms", 4 * ms, 8)]


def _sweep():
    params = [{"model": "phinet", "hyper": {"alpha": a}} for a in (0.25, 0.5, 1.0)]
    params += [{"model": "phinet", "hyper": {"num_layers": n}} for n in (5, 7)]
    params += [{"model": "phinet", "hyper": {"divisor": 8, "pad_layer": False}}]
    per_cell = [_cell_rows(80 + 5 * a, 1e5 * a, 2 + a) for a in (0.25, 0.5, 1.0)]
    per_cell += [_cell_rows(82 + n, 1e5 * n, n) for n in (5, 7)] + [_cell_rows(85, 2e5, 3)]
    return sweep_rows(params, per_cell)


def test_each_numeric_swept_parameter_gets_a_figure_with_accuracy_size_macs_latency():
    rows = _sweep()
    assert numeric_keys(rows) == ["hyper.alpha", "hyper.num_layers"]  # divisor is set in one cell only
    figs = {f.name: f for f in sweep_vs_hyper(rows)}
    assert set(figs) == {"sweep_vs_hyper.alpha", "sweep_vs_hyper.num_layers"}
    cap = figs["sweep_vs_hyper.alpha"].caption
    for panel in ("top-1 (%)", "size on disk (kB)", "MMACs / image", "median latency (ms)", "smallest batch timed, 1"):
        assert panel in cap, panel
    assert figs["sweep_vs_hyper.alpha"].png.startswith(b"\x89PNG")
    assert {"sweep_vs_hyper.alpha", "sweep_vs_hyper.num_layers"} <= {f.name for f in make_figures(rows)}


def test_no_figure_without_a_numeric_sweep():
    params = [{"method": "w8a8:mse"}, {"method": "w4a8:mse"}]  # the method is shown by the rows themselves
    rows = sweep_rows(params, [_cell_rows(90, 1e5, 2), _cell_rows(85, 5e4, 2)])
    assert sweep_vs_hyper(rows) == []
