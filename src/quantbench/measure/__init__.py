"""quantbench.measure: accuracy (with honest intervals), parameters, size, MACs, latency, environment.

Each module has one job; everything a caller needs is re-exported here. Conventions used
throughout: accuracies in percent, differences in percentage points, sizes in bytes (decimal
units when formatted), FLOPs = 2 x MACs, latencies in milliseconds per batch (median).

Example:
    >>> from quantbench.measure import count_macs, evaluate, measure_latency, paired_difference
"""

from __future__ import annotations

from quantbench.measure.accuracy import (
    EvalResult,
    PairedDifference,
    evaluate,
    mcnemar_exact_p,
    paired_difference,
    proportion_ci,
)
from quantbench.measure.environment import environment, git_sha
from quantbench.measure.latency import (
    LatencyResult,
    latency_vs_batch,
    measure_latency,
    peak_rss_bytes,
    torch_runner,
)
from quantbench.measure.macs import MacsResult, count_macs, macs_vs_batch
from quantbench.measure.params import count_parameters
from quantbench.measure.size import file_size, format_bytes, save_fp32

__all__ = [
    "EvalResult",
    "LatencyResult",
    "MacsResult",
    "PairedDifference",
    "count_macs",
    "count_parameters",
    "environment",
    "evaluate",
    "file_size",
    "format_bytes",
    "git_sha",
    "latency_vs_batch",
    "macs_vs_batch",
    "mcnemar_exact_p",
    "measure_latency",
    "paired_difference",
    "peak_rss_bytes",
    "proportion_ci",
    "save_fp32",
    "torch_runner",
]
