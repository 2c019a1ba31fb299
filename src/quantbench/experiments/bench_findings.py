"""What ``bench`` may conclude in words: verdicts only from a quiet machine and separated intervals.

Why this module: the plain sentences (a quantized variant SLOWER than FP32, the fastest cell,
what quantization buys against the best FP32 deployment) are written by
:func:`quantbench.report.tables.speed_findings`, the one place that words them. This module
decides which comparisons have the evidence for a sentence:

* a cell timed while other processes used the machine (:func:`~quantbench.measure.latency.busy_shares`,
  the same test the report's warning uses) makes the whole run verdict-free: one warning line
  naming the load, and the numbers in the table only;
* a ratio between two cells whose bootstrap 95% intervals of the median overlap
  (:func:`~quantbench.measure.latency.medians_differ`) is stated as "no measurable difference"
  instead of faster or slower.

Example:
    >>> cell = {"model": "m", "batch": 1, "speedup_vs_fp32": 1.0, "speedup_vs_torch_fp32": 1.0,
    ...         "median_ms": 1.0, "median_ci_low_ms": 0.9, "median_ci_high_ms": 1.1, "other_cpu_share": 0.7}
    >>> bench_findings([{**cell, "engine": "torch", "variant": "fp32"}])[0][:22]
    'WARNING: busy machine:'
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from quantbench.measure.latency import busy_warning, medians_differ

__all__ = ["bench_findings"]

Record = dict[str, Any]


def _ms(r: Record) -> str:
    """``0.71 ms [0.69, 0.74]``: a median with its 95% interval (the interval only when known)."""
    lo, hi = r.get("median_ci_low_ms"), r.get("median_ci_high_ms")
    ci = f" [{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else ""
    return f"{r['median_ms']:.3g} ms{ci}"


def _label(r: Record) -> str:
    return f"{r.get('model') + ' ' if r.get('model') else ''}{r['engine']} {r['variant']}"


def _only_fastest(r: Record) -> Record:
    """A copy that yields only the per-batch "fastest" sentences (no SLOWER line, no peak note)."""
    return {**r, "speedup_vs_fp32": None, "fraction_of_peak": None}


def bench_findings(records: Sequence[Record]) -> list[str]:
    """Plain sentences about a benchmark's cells, with no verdict the measurements cannot carry.

    Args:
        records: Cells as :func:`~quantbench.experiments.bench.run_bench` makes them (``engine``,
            ``variant``, ``batch``, ``median_ms``, ``median_ci_low_ms``/``_high_ms``,
            ``other_cpu_share``, the speed-ups).

    Returns:
        One warning line when any cell was timed on a busy machine; otherwise the sentences of
        :func:`~quantbench.report.tables.speed_findings` for separated intervals and "no measurable
        difference" for overlapping ones.
    """
    from quantbench.experiments.bench import FP32_OF, REFERENCE
    from quantbench.report.tables import speed_findings

    warning = busy_warning([r.get("other_cpu_share") for r in records])
    if warning:
        return [warning]
    cell = {(r.get("model", ""), r["engine"], r["variant"], r["batch"]): r for r in records}
    same_engine, notes = [], []
    for r in records:
        base = cell.get((r.get("model", ""), FP32_OF.get(r["engine"], r["engine"]), "fp32", r["batch"]))
        m = {**r, "speedup_vs_torch_fp32": None}  # this pass words the same-engine comparisons only
        if r["variant"] != "fp32" and base is not None and r.get("speedup_vs_fp32") is not None \
                and not medians_differ(r, base):
            m["speedup_vs_fp32"] = None
            notes.append(f"{_label(r)} vs {base['engine']} fp32 at batch {r['batch']}: no measurable difference "
                         f"({_ms(r)} vs {_ms(base)}; the 95% intervals overlap).")
        same_engine.append(m)
    lines = speed_findings(same_engine)
    groups: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for r in records:
        if r.get("speedup_vs_torch_fp32") is not None:
            groups[(r.get("model", ""), r["batch"])].append(r)
    for (model, b), rs in sorted(groups.items()):
        where = f"{model + ', ' if model else ''}batch {b}"
        ref = cell.get((model, *REFERENCE, b))
        best = max(rs, key=lambda r: r["speedup_vs_torch_fp32"])
        if ref is not None and best is not ref and not medians_differ(best, ref):
            notes.append(f"{where}: the fastest cell ({best['engine']} {best['variant']}, {_ms(best)}) and PyTorch "
                         f"eager fp32 ({_ms(ref)}): no measurable difference (the 95% intervals overlap).")
            continue
        timed = [r for r in rs if r.get("median_ms")]
        fp32 = [r for r in timed if r["variant"] == "fp32"]
        quant = [r for r in timed if r["variant"] in ("int8", "dynamic")]
        bf = min(fp32, key=lambda r: r["median_ms"]) if fp32 else None
        bq = min(quant, key=lambda r: r["median_ms"]) if quant else None
        if bf is not None and bq is not None and not medians_differ(bq, bf):
            lines += speed_findings([_only_fastest(best)])  # alone, it yields the "fastest is" sentence only
            notes.append(f"{where}: the fastest quantized model ({bq['engine']} {bq['variant']}, {_ms(bq)}) and the "
                         f"fastest FP32 one ({bf['engine']}, {_ms(bf)}): no measurable difference (the 95% "
                         "intervals overlap).")
        else:
            lines += speed_findings([_only_fastest(r) for r in rs])
    return lines + notes
