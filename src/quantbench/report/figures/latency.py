"""Latency figures: latency and throughput against batch size, the engine speed-up matrix, imported devices.

MACs per batch is not drawn: it is MACs per image times the batch, a straight line with no
information (the table gives MACs per image).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from quantbench.report.figures.common import Figure, Row, _batch_axis, _label, _plt, _png
from quantbench.report.tables import bench_records, latency_ci, variant_key


def latency_vs_batch(rows: Sequence[Row]) -> Figure | None:
    """Median latency and throughput against batch size per variant; one row of panels per model.

    Error bars are the latency's 95% CI when the rows carry one (:func:`~quantbench.report.tables.latency_ci`),
    else a bar up to the 90th percentile. Drawn only when some variant was timed at two batch
    sizes or more (one point per line is a table, not a curve).
    """
    med: dict[tuple[str, str, str], list[tuple[int, float, float, float]]] = defaultdict(list)
    threads = "?"
    with_ci = False
    for r in rows:
        if r["metric"] == "latency_median_ms" and r["value"] is not None and r["batch"] is not None:
            e = r["extra"]
            ci = latency_ci(e)
            if ci:
                (lo, hi), with_ci = ci, True
            else:
                lo, hi = r["value"], e.get("p90_ms", r["value"])
            med[variant_key(r)].append((r["batch"], r["value"], lo, hi))
            threads = e.get("threads", threads)
    if not med or max(len({p[0] for p in v}) for v in med.values()) < 2:
        return None
    models = sorted({k[0] for k in med})
    plt = _plt()
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.8 * len(models)), squeeze=False)
    for row, model in zip(axes, models, strict=True):
        ax_l, ax_t = row
        batches: list[int] = []
        for key, pts in sorted(med.items()):
            if key[0] != model:
                continue
            pts.sort()
            b, m, lo, hi = zip(*pts, strict=True)
            batches += b
            ax_l.errorbar(b, m, yerr=[[max(0.0, x - q) for q, x in zip(lo, m, strict=True)],
                                      [max(0.0, q - x) for q, x in zip(hi, m, strict=True)]], marker="o",
                          capsize=3, label=_label(key))
            ax_t.plot(b, [bb / (mm / 1000.0) for bb, mm in zip(b, m, strict=True)], marker="o", label=_label(key))
        ax_l.set(yscale="log", xlabel="batch size", ylabel="latency per batch (ms)", title=f"{model}: latency")
        ax_t.set(xlabel="batch size", ylabel="images / s", title=f"{model}: throughput")
        for ax in (ax_l, ax_t):
            _batch_axis(ax, batches)
            ax.grid(alpha=0.3, which="both")
        ax_t.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    bars = "95% confidence interval of the median" if with_ci else "bar up to the 90th percentile"
    return Figure("latency_vs_batch", _png(fig),
                  f"Latency of one batch (median; {bars}) and throughput (batch / median) against batch "
                  f"size; {threads} thread(s), after warm-up.")


def speedup_matrix(rows: Sequence[Row]) -> Figure | None:
    """Heat map of the speed-up over PyTorch eager FP32.

    One model: a row per engine/variant, a column per batch size. Several models (a study):
    a row per model and batch size, a column per engine/variant, so models compare at a glance.
    """
    cells = bench_records(rows)
    if not cells:
        return None
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    models = sorted({c["model"] for c in cells})
    combos = sorted({(c["engine"], c["variant"]) for c in cells})
    batches = sorted({c["batch"] for c in cells})
    if len(models) == 1:
        rows_k = [(m, e, v) for m in models for e, v in combos]
        cols_k = batches
        def at(r: Any, col: Any) -> Any:
            return next((x for x in cells if (x["model"], x["engine"], x["variant"]) == r and x["batch"] == col),
                        None)
        row_labels = [f"{e} {v}" for _, e, v in rows_k]
        col_labels = [str(b) for b in cols_k]
        xlabel = "batch size"
    else:
        rows_k = [(m, b) for m in models for b in batches]
        cols_k = combos

        def at(r: Any, col: Any) -> Any:
            return next((x for x in cells if (x["model"], x["batch"]) == r and (x["engine"], x["variant"]) == col),
                        None)
        row_labels = [f"{m} b{b}" for m, b in rows_k]
        col_labels = [f"{e}\n{v}" for e, v in cols_k]
        xlabel = "engine / variant"
    grid = np.full((len(rows_k), len(cols_k)), np.nan)
    for i, r in enumerate(rows_k):
        for j, col in enumerate(cols_k):
            c = at(r, col)
            if c is not None and c["speedup_vs_torch_fp32"] is not None:
                grid[i, j] = c["speedup_vs_torch_fp32"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.6 + 1.1 * len(cols_k), 1.4 + 0.32 * len(rows_k)))
    finite = grid[np.isfinite(grid)]
    lo = float(min(finite.min(), 0.9)) if finite.size else 0.5
    hi = float(max(finite.max(), 1.1)) if finite.size else 2.0
    im = ax.imshow(np.log2(grid), cmap="RdYlGn", aspect="auto",
                   norm=TwoSlopeNorm(vmin=np.log2(lo), vcenter=0.0, vmax=np.log2(hi)))
    for i in range(len(rows_k)):
        for j in range(len(cols_k)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}x", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols_k)), col_labels, fontsize=7 if len(models) > 1 else 9)
    ax.set_yticks(range(len(rows_k)), row_labels, fontsize=7)
    ax.set(xlabel=xlabel, title="speed-up vs PyTorch eager FP32")
    fig.colorbar(im, ax=ax, label="log2 speed-up")
    return Figure("speedup_matrix", _png(fig),
                  "Speed-up of every engine and variant over PyTorch eager FP32 on the same model and batch size "
                  "(median latency ratio, measured in the same run; > 1 = faster). Red cells are slower than "
                  "PyTorch FP32; empty cells were not measured (see the skipped list).")



def device_latency(rows: Sequence[Row]) -> Figure | None:
    """Imported devices: measured latency vs batch per engine and scheme, the profile estimate dashed; speed-ups.

    One row of panels per device. Left: median latency per batch for every engine/scheme measured
    there, with the device profile's estimate (MACs x batch / GMAC/s, one per scheme; same MACs for
    every engine) as a dashed line, so the estimate's error is read off the gap. Right: the speed-up
    of each quantized scheme over the same engine's FP32 on that device, per batch size.
    """
    meas: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    est: dict[str, dict[int, set[float]]] = defaultdict(lambda: defaultdict(set))  # device -> batch -> estimates
    rates: dict[str, set[str]] = defaultdict(set)
    speed: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        dev = r["extra"].get("device") if isinstance(r.get("extra"), dict) else None
        if dev is None or r["batch"] is None:
            continue
        engine = str(r["engine"]).rsplit("@", 1)[0]
        if r["metric"] == "latency_median_ms":
            meas[(dev, engine, r["method"])].append((r["batch"], r["value"]))
        elif r["metric"] == "estimated_latency_ms":  # schemes with equal MACs share one estimate line
            est[dev][r["batch"]].add(round(r["value"], 9))
            rate = r["extra"].get("profile_gmacs")
            source = r["extra"].get("profile_source")  # given, measured (the device's GEMM ceiling) or published
            rates[dev].add((f"{rate:.3g} GMAC/s" if isinstance(rate, (int, float)) else "device profile")
                           + (f" ({source})" if source else ""))
        elif r["metric"] == "device_speedup_vs_fp32" and r["method"] != "fp32":
            speed[(dev, engine, r["method"])].append((r["batch"], r["value"]))
    if not meas:
        return None
    devices = sorted({k[0] for k in meas})
    series = sorted({k[1:] for k in meas})
    plt = _plt()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {k: colors[i % len(colors)] for i, k in enumerate(series)}
    fig, axes = plt.subplots(len(devices), 2, figsize=(11, 3.6 * len(devices)), squeeze=False)
    for (ax_l, ax_s), dev in zip(axes, devices, strict=True):
        batches: list[int] = []
        for (d, engine, scheme), pts in sorted(meas.items()):
            if d != dev:
                continue
            b, m = zip(*sorted(pts), strict=True)
            batches += b
            ax_l.plot(b, m, marker="o", color=color[(engine, scheme)], label=f"{scheme} / {engine}")
        by_batch = est.get(dev, {})
        for k in range(max((len(v) for v in by_batch.values()), default=0)):  # one line per distinct MAC count
            pts = sorted((b, sorted(vs)[k]) for b, vs in by_batch.items() if len(vs) > k)
            ax_l.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", color="0.3", lw=1.2,
                      label=f"estimate at {', '.join(sorted(rates[dev]))}" if k == 0 else None)
        ax_l.set(yscale="log", xlabel="batch size", ylabel="latency per batch (ms)", title=f"{dev}: measured latency")
        for (d, engine, scheme), pts in sorted(speed.items()):
            if d == dev:
                b, v = zip(*sorted(pts), strict=True)
                ax_s.plot(b, v, marker="s", color=color[(engine, scheme)], label=f"{scheme} / {engine}")
        ax_s.axhline(1.0, color="0.5", lw=0.8)
        ax_s.set(xlabel="batch size", ylabel="x the same engine's FP32", title=f"{dev}: speed-up over FP32")
        for ax in (ax_l, ax_s):
            _batch_axis(ax, batches)
            ax.grid(alpha=0.3, which="both")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    caption = ("Per imported device: median latency against batch size for every engine and scheme the device "
               "runner measured (solid)")
    caption += (", and the device profile's estimate, MACs x batch / rate in GMAC/s (dashed; the gap is the "
                "estimate's error)" if est else "; no device profile rate was given, so no estimate is drawn")
    caption += ". Right: speed-up of each quantized scheme over the same engine's FP32 on that device (> 1 = faster)."
    return Figure("device_latency", _png(fig), caption)

