"""This machine's measured compute peaks: how fast a large dense GEMM runs at each precision.

Why: "INT8 is 3x faster" means little without the ceiling. A square GEMM is the best case
every convolution kernel is chasing, so its rate is the practical peak of this CPU at this
thread count. An engine's achieved GMAC/s divided by the peak of its precision says how much
of the hardware it uses (depthwise convolutions and small batches use little of it).

Measured with :func:`~quantbench.measure.latency.measure_latency` (the one timing function):

* ``fp32``: the faster of ``torch.mm`` (oneDNN/MKL) and ONNX Runtime ``MatMul`` (MLAS);
* ``bf16``: ``torch.mm`` on bfloat16 matrices (only where the CPU has native BF16);
* ``int8``: the faster of ``torch._int_mm`` (int8 x int8 -> int32) and ONNX Runtime's
  ``MatMulInteger`` (u8 x s8, MLAS; VNNI where present).

Taking the best library per precision keeps "fraction of peak" from exceeding 1 just because
one library's GEMM is slower than another's convolution.

Rates are in GMAC/s (one multiply-accumulate per inner-product term; GFLOP/s = 2 x GMAC/s).

Example:
    >>> peaks = machine_peaks(threads=1, size=128, min_time_s=0.01)
    >>> peaks["fp32"].gmacs_per_s > 0
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from quantbench.errors import QuantbenchError
from quantbench.measure.latency import measure_latency

__all__ = ["Peak", "machine_peaks", "peak_precision"]


@dataclass(frozen=True)
class Peak:
    """One precision's GEMM rate.

    Attributes:
        precision: ``fp32``, ``bf16`` or ``int8``.
        gmacs_per_s: multiply-accumulates per second / 1e9 at the median GEMM time.
        source: what was timed (``torch.mm float32 1024x1024x1024``, ...).
        threads: threads used.
        median_ms: median time of one GEMM.
    """

    precision: str
    gmacs_per_s: float
    source: str
    threads: int
    median_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_precision(variant: str) -> str:
    """Which peak an engine variant is compared with (``dynamic`` computes in INT8)."""
    return {"int8": "int8", "dynamic": "int8", "bf16": "bf16"}.get(variant, "fp32")


def _torch_gemm(dtype: torch.dtype, n: int) -> Any:
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.int8:
        a = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=gen)
        b = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=gen)
        fn = torch._int_mm
    else:
        a = torch.randn(n, n, generator=gen).to(dtype)
        b = torch.randn(n, n, generator=gen).to(dtype)
        fn = torch.mm

    def run() -> object:
        with torch.inference_mode():
            return fn(a, b)

    run()  # raises here (not while timing) if the kernel does not exist on this build
    return run


def _ort_gemm(n: int, threads: int, precision: str) -> Any:
    """ONNX Runtime's MLAS GEMM (what its conv kernels use): MatMul fp32 or MatMulInteger u8 x s8."""
    from quantbench.device_gemm import gemm_model, ort_runner

    return ort_runner(*gemm_model(n, n, n, precision), threads)


def machine_peaks(threads: int | None = None, *, size: int = 1024, min_time_s: float = 0.5) -> dict[str, Peak]:
    """Measure the GEMM peak of each precision this machine computes natively.

    Args:
        threads: intra-op threads (None: torch's current setting), the same the benchmark uses.
        size: the square GEMM's dimension (1024 = 1.07 GMAC per call).
        min_time_s: timed seconds per precision.

    Returns:
        precision -> :class:`Peak`; ``bf16`` only where native, ``int8`` only where a kernel exists.
    """
    if size < 16:
        raise QuantbenchError(f"machine_peaks: size must be >= 16, got {size}")
    threads = threads or torch.get_num_threads()
    macs = float(size) ** 3
    out: dict[str, Peak] = {}

    def record(precision: str, make: Any, source: str) -> None:
        try:
            fn = make()
        except (ImportError, RuntimeError, AttributeError, NotImplementedError):
            return  # this library has no such kernel here; another may
        lat = measure_latency(fn, batch_size=1, threads=threads, warmup=2, min_iters=5, min_time_s=min_time_s)
        peak = Peak(precision, macs / (lat.median_ms / 1000.0) / 1e9, source, threads, lat.median_ms)
        if precision not in out or peak.gmacs_per_s > out[precision].gmacs_per_s:
            out[precision] = peak

    dims = f"{size}x{size}x{size}"
    record("fp32", lambda: _torch_gemm(torch.float32, size), f"torch.mm float32 {dims}")
    record("fp32", lambda: _ort_gemm(size, threads, "fp32"), f"onnxruntime MatMul float32 {dims}")
    from quantbench.engines.base import cpu_has_bf16

    if cpu_has_bf16()[0]:
        record("bf16", lambda: _torch_gemm(torch.bfloat16, size), f"torch.mm bfloat16 {dims}")
    record("int8", lambda: _torch_gemm(torch.int8, size), f"torch._int_mm int8 {dims}")
    record("int8", lambda: _ort_gemm(size, threads, "int8"), f"onnxruntime MatMulInteger u8s8 {dims}")
    return out
