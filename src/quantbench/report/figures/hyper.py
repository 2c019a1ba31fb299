"""Sweep figures against a numeric hyper-parameter: top-1 (and size, MACs, latency where measured) vs its value.

Why: a study that sweeps an architecture's width multiplier, depth or expansion factor (PhiNet's alpha,
beta, t0, number of layers) shows each as a curve against the parameter; a pivot table of the same cells
hides the trend. The sweep report (:func:`quantbench.report.sweep.sweep_rows`) tags every row of a cell
with that cell's varying parameters (``extra["sweep_cell"]``); for each numeric parameter set in at least
two cells with different values this draws one figure, one line per method / engine (and per value of any
other parameter those cells vary), with one panel per measured quantity.

Example:
    >>> sweep_vs_hyper([])
    []
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from quantbench.report.figures.common import Figure, Row, _plt, _png

# Panels in order: (metric, y label, scale of the stored value)
_PANELS = (("top1", "top-1 (%)", 1.0), ("size_bytes", "size on disk (kB)", 1e-3), ("macs", "MMACs / image", 1e-6),
           ("latency_median_ms", "median latency (ms)", 1.0))


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def numeric_keys(rows: Sequence[Row]) -> list[str]:
    """Cell parameters that are numeric wherever set and take at least two values across the cells.

    Example:
        >>> numeric_keys([{"extra": {"sweep_cell": {"hyper.alpha": 0.5}}}, {"extra": {"sweep_cell": {"hyper.alpha": 1}}},
        ...               {"extra": {"sweep_cell": {"hyper.pad_layer": False}}}])
        ['hyper.alpha']
    """
    values: dict[str, set[Any]] = defaultdict(set)
    bad: set[str] = set()
    for r in rows:
        for k, v in ((r.get("extra") or {}).get("sweep_cell") or {}).items():
            if v is None:
                continue
            (values[k].add(float(v)) if _numeric(v) else bad.add(k))
    return sorted(k for k, vs in values.items() if k not in bad and len(vs) >= 2)


def _series(rows: Sequence[Row], key: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """metric -> line label -> [(parameter value, metric value)] for the cells that set ``key``."""
    batch = min((r["batch"] for r in rows if r["metric"] == "latency_median_ms" and r.get("batch")
                 and key in ((r.get("extra") or {}).get("sweep_cell") or {})), default=None)
    out: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cell = (r.get("extra") or {}).get("sweep_cell") or {}
        if not _numeric(cell.get(key)) or r["value"] is None:
            continue
        metric = r["metric"]
        if metric not in {m for m, _, _ in _PANELS} or (metric == "latency_median_ms" and r.get("batch") != batch):
            continue
        others = ", ".join(f"{k}={v}" for k, v in sorted(cell.items()) if k != key and v is not None)
        method = r["method"] if metric != "macs" else "fp32"  # MACs do not change with quantization
        label = f"{method} / {r['engine']}" + (f" [{others}]" if others else "")
        out[metric][label].append((float(cell[key]), float(r["value"])))
    return out


def sweep_vs_hyper(rows: Sequence[Row]) -> list[Figure]:
    """One figure per numeric swept parameter (see the module docstring); [] for a sweep without one."""
    figs = []
    for key in numeric_keys(rows):
        series = _series(rows, key)
        panels = [(m, label, scale) for m, label, scale in _PANELS
                  if any(len({x for x, _ in pts}) >= 2 for pts in series.get(m, {}).values())]
        if not panels or panels[0][0] != "top1":
            continue
        plt = _plt()
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2.2, 3.8), squeeze=False)
        xs_all: set[float] = set()
        colors: dict[str, Any] = {}  # one colour per method (and other-parameter values) in every panel
        styles: dict[str, str] = {}  # one line style per engine: the same model on two engines, told apart
        legend: dict[str, Any] = {}
        for ax, (metric, ylabel, scale) in zip(axes[0], panels, strict=True):
            for label, pts in sorted(series[metric].items()):
                pts = sorted(set(pts))
                xs_all.update(x for x, _ in pts)
                hue = label.split(" / ")[0] + label.partition(" [")[2]
                engine = label.partition(" / ")[2].partition(" [")[0]
                style = styles.setdefault(engine, ("-", "--", ":", "-.")[len(styles) % 4])
                line = ax.plot([x for x, _ in pts], [y * scale for _, y in pts], marker="o", label=label,
                               linestyle=style, **({"color": colors[hue]} if hue in colors else {}))[0]
                colors.setdefault(hue, line.get_color())
                legend.setdefault(label, line)
            ax.set(xlabel=key, ylabel=ylabel)
            ax.grid(alpha=0.3)
        ticks = sorted(xs_all)
        for ax in axes[0]:
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axes[0][-1].legend(list(legend.values()), list(legend), fontsize=7, loc="center left",
                           bbox_to_anchor=(1.02, 0.5))
        fig.suptitle(f"sweep over {key}", fontsize=10)
        lat = next((r["batch"] for r in rows if r["metric"] == "latency_median_ms" and r.get("batch")), None)
        figs.append(Figure(f"sweep_vs_{key}", _png(fig),
                           f"Each cell of the sweep that sets {key}, against its value: "
                           + ", ".join(label for _, label, _ in panels)
                           + (f" (latency at the smallest batch timed, {lat})" if lat and any(
                               m == "latency_median_ms" for m, _, _ in panels) else "")
                           + "; one line per method / engine and per value of the other parameters those cells "
                             "set (colour: method; line style: engine). Top-1 is on each cell's own evaluation "
                             "images."))
    return figs
