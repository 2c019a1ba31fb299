"""THE timing function: every engine's latency in quantbench goes through :func:`measure_latency`.

Why one function: speed-ups are ratios, and a ratio is only honest when numerator and
denominator are measured the same way - same warm-up, same thread count, same stopping rule,
same statistic. Engines therefore do not time themselves; they hand a zero-argument closure
that runs ONE inference on an already prepared batch (e.g. ``lambda: sess.run(None, feeds)``)
and this module does the rest.

What is reported: the **median** of per-call wall times (robust to the scheduler hiccups that
make batch-1 timings on a small machine vary by up to 30%), the 90th percentile (tail), mean,
min, standard deviation, all samples, and throughput = batch / median. Timings are
wall-clock (``time.perf_counter``), per batch, in milliseconds.

Also recorded: ``other_cpu_share``, the share of the machine's CPU time that OTHER processes used
while the timed calls ran (busy time from ``/proc/stat`` minus this process's own CPU time, over
wall time x logical cores). On a small shared machine a neighbour's job can make a median 10-100x
slower; this number lets a report say which latencies were taken on a busy machine instead of
presenting them as the model's speed. ``None`` where ``/proc/stat`` does not exist.
:func:`~quantbench.machine_load.busy_shares` (re-exported here) is THE busy test (share above
``BUSY_SHARE``): the console (``bench``) and the report both call it, so they never disagree on which
numbers came from a busy machine. It lives in a torch-free module so the report can import it cheaply.

Also reported: a 95% bootstrap interval of the median (:func:`bootstrap_median_ci`, seeded, so
the same samples always give the same interval). Two medians whose intervals overlap are not
called faster or slower than each other (:func:`medians_differ`): on a small shared machine a
5% "speed-up" is often noise.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.machine_load import BUSY_SHARE, busy_shares, busy_warning, medians_differ

__all__ = [
    "BUSY_SHARE",
    "LatencyResult",
    "bootstrap_median_ci",
    "busy_shares",
    "busy_warning",
    "latency_vs_batch",
    "measure_latency",
    "medians_differ",
    "peak_rss_bytes",
    "torch_runner",
]


@dataclass
class LatencyResult:
    """Timing statistics of one zero-argument inference call (one batch).

    Attributes:
        median_ms: median per-call time in milliseconds (the headline number).
        p90_ms: 90th percentile (linear interpolation), milliseconds.
        mean_ms: mean, milliseconds.
        min_ms: fastest call, milliseconds.
        std_ms: sample standard deviation (ddof=1; 0 for a single sample), milliseconds.
        iterations: number of timed calls (warm-up excluded).
        warmup: number of untimed warm-up calls.
        threads: torch intra-op threads in effect while timing.
        batch_size: images per call.
        throughput_ips: images per second, ``batch_size / median``.
        samples_ms: every timed call, in order, milliseconds.
        other_cpu_share: share (0..1) of all cores' time used by other processes while timing,
            or None where it cannot be read (no ``/proc/stat``).
        median_ci_low_ms / median_ci_high_ms: seeded bootstrap 95% interval of the median
            (:func:`bootstrap_median_ci`), milliseconds.
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    std_ms: float
    iterations: int
    warmup: int
    threads: int
    batch_size: int
    throughput_ips: float
    samples_ms: list[float] = field(default_factory=list, repr=False)
    other_cpu_share: float | None = None
    median_ci_low_ms: float | None = None
    median_ci_high_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields (a non-finite throughput becomes ``None``).

        Example:
            >>> r = measure_latency(lambda: None, batch_size=1, min_time_s=0)
            >>> r.as_dict()["iterations"]
            10
        """
        d = asdict(self)
        if not np.isfinite(d["throughput_ips"]):
            d["throughput_ips"] = None
        d["samples_ms"] = [float(s) for s in self.samples_ms]
        return d


def _busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (``/proc/stat``), or None where unavailable."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK")


def other_cpu_share(busy0: float | None, busy1: float | None, own_s: float, wall_s: float,
                    cores: int | None = None) -> float | None:
    """Share of the machine's CPU time used by other processes: (busy - own) / (wall x cores), in [0, 1].

    Example:
        >>> round(other_cpu_share(100.0, 101.5, 0.5, 1.0, cores=2), 3)
        0.5
    """
    if busy0 is None or busy1 is None or wall_s <= 0:
        return None
    cores = cores or os.cpu_count() or 1
    return min(1.0, max(0.0, (busy1 - busy0 - own_s) / (wall_s * cores)))


def bootstrap_median_ci(samples_ms: Sequence[float], *, resamples: int = 1000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``samples_ms`` (seeded: same samples, same interval).

    Why: a median from 10-1000 noisy calls is itself uncertain; the interval says how much, so a
    ratio of two medians is only called a speed-up when the intervals are apart. Cheap: one
    ``resamples x n`` index draw and one ``np.median`` along an axis (about 10 ms for 1000 samples).

    Example:
        >>> lo, hi = bootstrap_median_ci([1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 1.0])
        >>> lo <= 1.0 <= hi
        True
    """
    ms = np.asarray(samples_ms, dtype=np.float64)
    if ms.size == 0:
        raise QuantbenchError("bootstrap_median_ci: no samples")
    if not 0.0 < level < 1.0 or resamples < 1:
        raise QuantbenchError(f"bootstrap_median_ci: need 0 < level < 1 and resamples >= 1, got {level}, {resamples}")
    if ms.size == 1:
        return float(ms[0]), float(ms[0])
    rng = np.random.default_rng(seed)
    medians = np.median(ms[rng.integers(0, ms.size, size=(resamples, ms.size))], axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(medians, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _summarize(samples_s: list[float], *, warmup: int, threads: int, batch_size: int,
               other_share: float | None = None) -> LatencyResult:
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    median = float(np.median(ms))
    lo, hi = bootstrap_median_ci(ms)
    return LatencyResult(
        median_ms=median,
        p90_ms=float(np.percentile(ms, 90)),
        mean_ms=float(ms.mean()),
        min_ms=float(ms.min()),
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        iterations=int(ms.size),
        warmup=warmup,
        threads=threads,
        batch_size=batch_size,
        throughput_ips=batch_size / (median / 1000.0) if median > 0 else float("inf"),
        samples_ms=ms.tolist(),
        other_cpu_share=other_share,
        median_ci_low_ms=lo,
        median_ci_high_ms=hi,
    )


def measure_latency(
    fn: Callable[[], object],
    *,
    batch_size: int,
    threads: int | None = None,
    warmup: int = 5,
    min_iters: int = 10,
    max_iters: int = 1000,
    min_time_s: float = 1.0,
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyResult:
    """Time ``fn()`` (one inference on a prepared batch) and summarise the per-call times.

    Protocol: set torch's intra-op threads to ``threads`` (restored afterwards, even on
    error), call ``fn`` ``warmup`` times untimed (lazy init, caches, allocator, JIT), then time
    calls one by one until BOTH ``min_iters`` calls and ``min_time_s`` seconds of timed calls
    are reached, or ``max_iters`` calls are done. Python's garbage collector is paused while
    timing (as ``timeit`` does) so a collection does not land inside one sample.

    ``fn`` must return only when its work is finished (call ``torch.cuda.synchronize()``
    inside it for asynchronous devices). Other engines' own thread settings (ONNX Runtime,
    OpenVINO) are given when their session is created; ``threads`` here is what torch uses
    and what is recorded.

    Args:
        fn: zero-argument closure running one inference.
        batch_size: images processed by one call (for throughput), > 0.
        threads: torch intra-op threads while timing, > 0; None keeps the current setting.
        warmup: untimed calls first, >= 0.
        min_iters: at least this many timed calls, >= 1.
        max_iters: at most this many timed calls, >= min_iters.
        min_time_s: keep timing until the timed calls add up to this many seconds.
        clock: monotonic clock in seconds (injectable for tests).

    Returns:
        A :class:`LatencyResult`.

    Raises:
        QuantbenchError: a non-positive ``batch_size``/``threads`` or inconsistent iteration limits.

    Example:
        >>> x = torch.randn(8, 64)
        >>> lin = torch.nn.Linear(64, 10)
        >>> r = measure_latency(lambda: lin(x), batch_size=8, threads=1, min_time_s=0.05)
        >>> r.median_ms <= r.p90_ms and r.iterations >= 10
        True
    """
    if batch_size <= 0:
        raise QuantbenchError(f"measure_latency: batch_size must be > 0, got {batch_size}")
    if threads is not None and threads <= 0:
        raise QuantbenchError(f"measure_latency: threads must be > 0, got {threads}")
    if warmup < 0:
        raise QuantbenchError(f"measure_latency: warmup must be >= 0, got {warmup}")
    if min_iters < 1 or max_iters < min_iters:
        raise QuantbenchError(
            f"measure_latency: need 1 <= min_iters <= max_iters, got min_iters={min_iters}, max_iters={max_iters}"
        )
    if min_time_s < 0:
        raise QuantbenchError(f"measure_latency: min_time_s must be >= 0, got {min_time_s}")

    previous_threads = torch.get_num_threads()
    gc_was_enabled = gc.isenabled()
    samples: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        used_threads = torch.get_num_threads()
        for _ in range(warmup):
            fn()
        gc.collect()
        gc.disable()
        timed = 0.0
        busy0, own0, wall0 = _busy_seconds(), time.process_time(), time.perf_counter()
        while len(samples) < max_iters and (len(samples) < min_iters or timed < min_time_s):
            t0 = clock()
            fn()
            dt = clock() - t0
            samples.append(dt)
            timed += dt
        share = other_cpu_share(busy0, _busy_seconds(), time.process_time() - own0, time.perf_counter() - wall0)
    finally:
        if gc_was_enabled:
            gc.enable()
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)
    return _summarize(samples, warmup=warmup, threads=used_threads, batch_size=batch_size, other_share=share)


def latency_vs_batch(
    make_fn: Callable[[int], Callable[[], object]], batch_sizes: Iterable[int], **kw: Any
) -> list[LatencyResult]:
    """Run :func:`measure_latency` for each batch size with a closure built for it.

    Args:
        make_fn: ``make_fn(b)`` prepares a batch of ``b`` images and returns the closure.
        batch_sizes: batch sizes, in the order to measure them.
        **kw: passed to :func:`measure_latency` (threads, warmup, min_iters, ...).

    Returns:
        One :class:`LatencyResult` per batch size, in the given order.

    Example:
        >>> model = torch.nn.Linear(64, 10)
        >>> rs = latency_vs_batch(lambda b: torch_runner(model, (1, 1, 64), b), [1, 4], min_time_s=0)
        >>> [r.batch_size for r in rs]
        [1, 4]
    """
    return [measure_latency(make_fn(int(b)), batch_size=int(b), **kw) for b in batch_sizes]


def torch_runner(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> Callable[[], object]:
    """Closure running eager PyTorch ``model`` on a fixed random batch, for :func:`measure_latency`.

    The batch is made once (seeded, so runs are repeatable) on the model's device and dtype,
    outside the timed call; the model is put in eval mode; each call runs under
    ``torch.inference_mode``.

    Args:
        model: eager PyTorch model.
        input_shape: ``(channels, height, width)`` of one image.
        batch_size: images per call, > 0.

    Returns:
        A zero-argument callable returning the model's output.

    Example:
        >>> run = torch_runner(torch.nn.Conv2d(3, 8, 3), (3, 32, 32), batch_size=4)
        >>> tuple(run().shape)
        (4, 8, 30, 30)
    """
    if batch_size <= 0:
        raise QuantbenchError(f"torch_runner: batch_size must be > 0, got {batch_size}")
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *input_shape), generator=gen).to(device=device, dtype=dtype)
    model.eval()

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process so far, in bytes (None where not available).

    Why: a smaller model file does not always mean less memory at run time (engines may
    unpack weights); this is the cheap, always-available high-water mark (it never goes down,
    so measure in a fresh process to attribute it to one model).

    On Linux this is ``VmHWM`` from ``/proc/self/status``: the high-water mark of this
    process's own memory map. ``getrusage``'s ``ru_maxrss`` is not used there because Linux
    carries it across ``exec``: a child started by ``spawn`` would report at least its
    parent's RSS at fork time.

    Example:
        >>> peak_rss_bytes() > 0
        True
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024
