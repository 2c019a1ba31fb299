"""This machine's FP32 and INT8 GEMM ceilings at CNN layer shapes, measured as a device bundle measures them.

Why: "INT8 is 1.8x faster than FP32" is only good or bad against what the CPU and runtime can do. The
ceiling ratio (fastest INT8 kernel / fastest FP32 kernel, both in ONNX Runtime's MLAS, on the im2col
shapes of ResNet 3x3 convolutions) is the most a whole INT8 model can gain over FP32 there: about 2x on
an AVX2-only CPU, 3-5x with AVX-512 VNNI. ``benchmarks/engines.py`` reports each model's INT8/FP32 speed-up
as a fraction of it.

The kernels, shapes, budget split and summary are :func:`quantbench.device_gemm.gemm_ceilings` - the very
code ``run_bundle.py`` runs on a device (it cannot import quantbench, so the code lives there and this
module calls it) - timed here with :func:`~quantbench.measure.latency.measure_latency`, the one timing
function. Compare :mod:`quantbench.measure.peaks`: one large square GEMM per precision and library (torch
and ONNX Runtime), the "% of peak" of ``bench``.

Rates: ``gmacs_per_s`` (multiply-accumulates / s / 1e9) and ``gops_per_s`` = 2 x ``gmacs_per_s`` (FLOP/s
for fp32, integer op/s for int8).

Example:
    >>> c = measure_ceilings(threads=1, budget_s=0.05)
    >>> c["fp32"]["gmacs_per_s"] > 0 and c["int8_over_fp32"] > 0
    True
    >>> describe_ceilings(c)  # doctest: +SKIP
    'fp32 102.4 GMAC/s (205 GFLOP/s), int8 349.7 GMAC/s (699 GOP/s); int8/fp32 3.42 (onnxruntime 1.32.0, 2 threads)'
"""

from __future__ import annotations

from typing import Any

from quantbench.device_gemm import describe as describe_ceilings
from quantbench.errors import QuantbenchError

__all__ = ["describe_ceilings", "measure_ceilings"]


def measure_ceilings(threads: int | None = None, *, budget_s: float = 2.5) -> dict[str, Any]:
    """Measure this machine's FP32 and INT8 GEMM ceilings with ONNX Runtime (numpy fp32 without it).

    Args:
        threads: ONNX Runtime intra-op threads (None: torch's current setting, as the benchmarks use).
        budget_s: timed seconds in all, shared by the kernels (session creation and warm-up on top).

    Returns:
        The dict ``run_bundle.py`` stores under ``ceilings``: ``fp32``/``int8`` (``gmacs_per_s``,
        ``gops_per_s``, ``kernel``, ``op`` of the fastest kernel), ``int8_over_fp32``, ``threads``,
        ``runtime``, ``kernels`` (every timed kernel), ``convention``.

    Raises:
        QuantbenchError: a negative budget or non-positive thread count.
    """
    import torch

    from quantbench.device_gemm import gemm_ceilings
    from quantbench.measure.latency import measure_latency

    if not budget_s >= 0:
        raise QuantbenchError(f"measure_ceilings: budget_s must be >= 0, got {budget_s}")
    if threads is not None and threads < 1:
        raise QuantbenchError(f"measure_ceilings: threads must be >= 1, got {threads}")
    threads = threads or torch.get_num_threads()

    def timer(fn: Any, min_time_s: float) -> dict[str, Any]:
        lat = measure_latency(fn, batch_size=1, threads=threads, warmup=1, min_iters=3, min_time_s=min_time_s)
        return {"median_ms": lat.median_ms, "iterations": lat.iterations, "other_cpu_share": lat.other_cpu_share}

    return gemm_ceilings(threads, budget_s, timer)
