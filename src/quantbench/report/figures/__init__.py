"""Report figures (matplotlib, imported lazily with the Agg backend), one module per family.

Each figure function takes store rows and returns a :class:`Figure` (PNG bytes + caption) or
None when the rows hold nothing worth a picture (one point, a straight line by construction); a family
drawn once per model or regime (``split_accuracy``) returns a list.
:func:`make_figures` is the entry point: it runs every family and ends each caption with the
machine (or devices) the numbers come from.
"""

from __future__ import annotations

from collections.abc import Sequence

from quantbench.report.figures.accuracy import (
    accuracy_drop,
    accuracy_vs_latency,
    accuracy_vs_loss,
    accuracy_vs_size,
    parameters,
    sensitivity,
    training_curves,
)
from quantbench.report.figures.common import Figure, Row, _plt, _png, matplotlib_available, pareto_front
from quantbench.report.figures.hyper import sweep_vs_hyper
from quantbench.report.figures.latency import device_latency, latency_vs_batch, speedup_matrix
from quantbench.report.figures.split import (
    split_accuracy,
    split_bpp,
    split_latency,
    split_rate_accuracy,
    split_regimes,
)

__all__ = ["ALL_FIGURES", "Figure", "accuracy_drop", "accuracy_vs_latency", "accuracy_vs_loss", "accuracy_vs_size",
           "device_latency", "latency_vs_batch", "make_figures", "matplotlib_available", "parameters", "pareto_front",
           "sensitivity", "speedup_matrix", "split_accuracy", "split_bpp", "split_latency", "split_rate_accuracy",
           "split_regimes", "sweep_vs_hyper", "training_curves", "_plt", "_png"]

ALL_FIGURES = (training_curves, accuracy_vs_loss, accuracy_drop, parameters, accuracy_vs_size,
               accuracy_vs_latency, sensitivity, latency_vs_batch, speedup_matrix, split_accuracy,
               split_regimes, split_rate_accuracy, split_bpp, split_latency, device_latency, sweep_vs_hyper)


def make_figures(rows: Sequence[Row], machine: str = "") -> list[Figure]:
    """Every figure this run's rows support (none when matplotlib is absent).

    Args:
        rows: store rows (``ResultStore.query``), of one run or of several (a sweep).
        machine: a sentence naming where the numbers were measured, appended to every caption.

    Example:
        >>> [f.name for f in make_figures([])]
        []
    """
    if not matplotlib_available():
        return []
    out: list[Figure] = []
    for fn in ALL_FIGURES:  # a family returns one figure, None, or a list (one per model / regime)
        made = fn(rows)
        out += made if isinstance(made, list) else [made] if made is not None else []
    if machine:
        out = [Figure(f.name, f.png, f"{f.caption} {machine}") for f in out]
    return out
