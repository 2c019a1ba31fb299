"""The one timing function (quantbench.measure.latency), tested with a fake clock.

No assertion here is about how fast anything runs: only about the protocol (warm-up,
stopping rule, thread handling) and the statistics computed from the samples.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.measure import latency_vs_batch, measure_latency, peak_rss_bytes, torch_runner


class FakeClock:
    """A clock that advances only when the timed function runs, by scripted durations."""

    def __init__(self, durations_s: Iterable[float]) -> None:
        self.now = 100.0
        self.durations = list(durations_s)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def fn(self) -> None:
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1


def test_exact_statistics_from_fake_clock() -> None:
    # Durations (ms) 1..10 after 2 warm-up calls of 1 s that must not be counted.
    clock = FakeClock([1.0, 1.0] + [i / 1000 for i in range(1, 11)])
    r = measure_latency(clock.fn, batch_size=4, warmup=2, min_iters=10, max_iters=10, min_time_s=0, clock=clock)
    assert clock.calls == 12
    assert r.iterations == 10 and r.warmup == 2
    assert r.samples_ms == pytest.approx([float(i) for i in range(1, 11)])
    assert r.median_ms == pytest.approx(5.5)
    assert r.p90_ms == pytest.approx(9.1)  # numpy linear interpolation
    assert r.mean_ms == pytest.approx(5.5)
    assert r.min_ms == pytest.approx(1.0)
    assert r.std_ms == pytest.approx(float(np.std(np.arange(1, 11), ddof=1)))
    assert r.throughput_ips == pytest.approx(4 / 0.0055)
    assert r.batch_size == 4


def test_stops_when_both_min_iters_and_min_time_are_reached() -> None:
    clock = FakeClock([0.25])
    r = measure_latency(clock.fn, batch_size=1, warmup=0, min_iters=2, min_time_s=1.0, clock=clock)
    assert r.iterations == 4  # 4 x 0.25 s reaches 1 s
    clock = FakeClock([0.25])
    r = measure_latency(clock.fn, batch_size=1, warmup=0, min_iters=6, min_time_s=1.0, clock=clock)
    assert r.iterations == 6  # min_iters dominates


def test_max_iters_caps_the_run() -> None:
    clock = FakeClock([0.001])
    r = measure_latency(clock.fn, batch_size=1, warmup=3, min_iters=2, max_iters=7, min_time_s=60, clock=clock)
    assert r.iterations == 7
    assert clock.calls == 10


def test_statistics_ordering_on_real_clock() -> None:
    x = torch.randn(2, 16)
    lin = nn.Linear(16, 4)
    r = measure_latency(lambda: lin(x), batch_size=2, warmup=1, min_iters=5, max_iters=50, min_time_s=0.01)
    assert 5 <= r.iterations <= 50
    assert len(r.samples_ms) == r.iterations
    order_stats = [r.min_ms, r.median_ms, r.p90_ms, max(r.samples_ms)]  # consistency, not speed
    assert order_stats == sorted(order_stats) and order_stats[0] > 0
    assert r.throughput_ips == pytest.approx(2 / (r.median_ms / 1000))


def test_threads_set_during_run_and_restored() -> None:
    before = torch.get_num_threads()
    target = 2 if before != 2 else 1
    seen: list[int] = []
    clock = FakeClock([0.001])

    def fn() -> None:
        seen.append(torch.get_num_threads())
        clock.fn()

    r = measure_latency(fn, batch_size=1, threads=target, warmup=1, min_iters=3, min_time_s=0, clock=clock)
    assert set(seen) == {target}
    assert r.threads == target
    assert torch.get_num_threads() == before


def test_threads_restored_when_fn_raises() -> None:
    before = torch.get_num_threads()
    target = 2 if before != 2 else 1

    def boom() -> None:
        raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError, match="engine failed"):
        measure_latency(boom, batch_size=1, threads=target)
    assert torch.get_num_threads() == before


def test_threads_none_records_current_setting() -> None:
    clock = FakeClock([0.001])
    r = measure_latency(clock.fn, batch_size=1, min_iters=1, min_time_s=0, clock=clock)
    assert r.threads == torch.get_num_threads()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1, "threads": 0}, "threads"),
        ({"batch_size": 1, "warmup": -1}, "warmup"),
        ({"batch_size": 1, "min_iters": 0}, "min_iters"),
        ({"batch_size": 1, "min_iters": 5, "max_iters": 4}, "max_iters"),
        ({"batch_size": 1, "min_time_s": -1}, "min_time_s"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs: dict, match: str) -> None:
    calls: list[int] = []
    with pytest.raises(QuantbenchError, match=match):
        measure_latency(lambda: calls.append(1), **kwargs)
    assert calls == []


def test_as_dict_is_json_friendly_even_for_zero_median() -> None:
    clock = FakeClock([0.0])
    r = measure_latency(clock.fn, batch_size=1, min_iters=3, min_time_s=0, clock=clock)
    d = json.loads(json.dumps(r.as_dict()))
    assert d["throughput_ips"] is None
    assert d["iterations"] == 3 and len(d["samples_ms"]) == 3


def test_latency_vs_batch_builds_one_closure_per_batch() -> None:
    clock = FakeClock([0.002])
    made: list[int] = []

    def make_fn(b: int):
        made.append(b)
        return clock.fn

    rs = latency_vs_batch(make_fn, [1, 8, 32], warmup=0, min_iters=2, min_time_s=0, clock=clock)
    assert made == [1, 8, 32]
    assert [r.batch_size for r in rs] == [1, 8, 32]
    assert [r.throughput_ips for r in rs] == pytest.approx([500.0, 4000.0, 16000.0])


def test_torch_runner_runs_fixed_batch_in_inference_mode() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    run = torch_runner(model, (3, 10, 10), batch_size=5)
    out1, out2 = run(), run()
    assert not model.training
    assert isinstance(out1, torch.Tensor) and out1.shape == (5, 4, 8, 8)
    assert out1.is_inference()
    assert torch.equal(out1, out2)  # same prepared batch every call
    with pytest.raises(QuantbenchError):
        torch_runner(model, (3, 10, 10), batch_size=0)


def test_peak_rss_is_positive_bytes() -> None:
    rss = peak_rss_bytes()
    if rss is None:  # platform without the resource module
        pytest.skip("resource.getrusage not available")
    assert isinstance(rss, int)
    assert rss > 10 * 1024 * 1024  # a Python process with torch loaded uses far more than 10 MB


def test_other_cpu_share_arithmetic_and_clamping() -> None:
    from quantbench.measure.latency import other_cpu_share

    assert other_cpu_share(10.0, 12.0, 0.5, 1.0, cores=2) == pytest.approx(0.75)  # 1.5 s of others over 2 core-s
    assert other_cpu_share(10.0, 10.1, 0.5, 1.0, cores=2) == 0.0  # own time above total busy (tick rounding)
    assert other_cpu_share(10.0, 20.0, 0.0, 1.0, cores=2) == 1.0
    assert other_cpu_share(None, 12.0, 0.5, 1.0) is None
    assert other_cpu_share(10.0, 12.0, 0.5, 0.0) is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc/stat (Linux)")
def test_a_busy_neighbour_shows_in_other_cpu_share() -> None:
    import subprocess
    import sys
    import time

    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 30\nwhile time.time() < t: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        r = measure_latency(lambda: time.sleep(0.01), batch_size=1, warmup=0, min_iters=1, min_time_s=0.6)
    finally:
        spinner.kill()
        spinner.wait()
    # this process sleeps; the spinner alone keeps one core busy: others' share is well above a quiet machine's 0
    assert r.other_cpu_share is not None and r.other_cpu_share > 0.25
    assert r.as_dict()["other_cpu_share"] == r.other_cpu_share


# ----------------------------------------------------------------------------- the median's interval


def _skewed(n: int, seed: int) -> list[float]:
    """Latency-like samples: a floor plus a long right tail (scheduler hiccups)."""
    rng = np.random.default_rng(seed)
    return (1.0 + rng.gamma(2.0, 0.05, size=n) + (rng.random(n) < 0.1) * rng.exponential(2.0, size=n)).tolist()


def test_bootstrap_ci_is_deterministic_and_brackets_the_median() -> None:
    from quantbench.measure.latency import bootstrap_median_ci

    for n, seed in [(10, 0), (37, 1), (200, 2), (1000, 3)]:
        xs = _skewed(n, seed)
        lo, hi = bootstrap_median_ci(xs)
        assert (lo, hi) == bootstrap_median_ci(list(xs))  # same samples, same interval, bit for bit
        assert lo <= float(np.median(xs)) <= hi
        assert lo >= min(xs) and hi <= max(xs)
    wide = np.subtract(*bootstrap_median_ci(_skewed(10, 4))[::-1])
    narrow = np.subtract(*bootstrap_median_ci(_skewed(1000, 4))[::-1])
    assert narrow < wide  # more calls, a tighter median
    assert bootstrap_median_ci([2.5]) == (2.5, 2.5)
    with pytest.raises(QuantbenchError, match="no samples"):
        bootstrap_median_ci([])


def test_measure_latency_reports_the_interval_of_its_own_samples() -> None:
    from quantbench.experiments.records import RowKey, latency_rows
    from quantbench.measure.latency import bootstrap_median_ci

    clock = FakeClock([i / 1000 for i in (3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8)])
    r = measure_latency(clock.fn, batch_size=2, warmup=0, min_iters=12, max_iters=12, min_time_s=0, clock=clock)
    assert (r.median_ci_low_ms, r.median_ci_high_ms) == pytest.approx(bootstrap_median_ci(r.samples_ms))
    d = r.as_dict()
    assert d["median_ci_low_ms"] == r.median_ci_low_ms and d["median_ci_high_ms"] == r.median_ci_high_ms
    (median_row, *_) = latency_rows(RowKey("m", "d"), r)
    assert median_row.metric == "latency_median_ms"
    assert median_row.extra["median_ci_low_ms"] == r.median_ci_low_ms
    assert median_row.extra["median_ci_high_ms"] == r.median_ci_high_ms
    assert "samples_ms" not in median_row.extra


def test_medians_differ_only_when_the_intervals_are_apart() -> None:
    from quantbench.measure.latency import medians_differ

    def ci(lo: float, hi: float) -> dict[str, float]:
        return {"median_ci_low_ms": lo, "median_ci_high_ms": hi}

    assert medians_differ(ci(1.0, 1.1), ci(1.2, 1.3)) and medians_differ(ci(1.2, 1.3), ci(1.0, 1.1))
    assert not medians_differ(ci(1.0, 1.2), ci(1.1, 1.3))
    assert not medians_differ(ci(1.0, 1.2), ci(1.2, 1.3))  # touching is overlapping
    assert not medians_differ(ci(1.0, 1.1), {"median_ms": 5.0})  # no interval, no verdict


def test_one_busy_test_for_console_and_report() -> None:
    from quantbench.machine_load import BUSY_SHARE, busy_shares, busy_warning
    from quantbench.measure import latency

    assert latency.busy_shares is busy_shares and latency.BUSY_SHARE == BUSY_SHARE
    assert busy_shares([None, BUSY_SHARE, BUSY_SHARE + 0.01, 0.0]) == [BUSY_SHARE + 0.01]
    line = busy_warning([0.02, 0.6, 0.77, None])
    assert line is not None and "\n" not in line
    assert "up to 77%" in line and "2 of 4 cells" in line and "no faster/slower verdicts" in line
    assert busy_warning([0.02, None]) is None and busy_warning([]) is None
