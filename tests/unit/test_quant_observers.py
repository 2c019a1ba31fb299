"""Observers and compute_qparams: conventions, every observer's contract, each one on known data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantbench.errors import QuantbenchError
from quantbench.quant.fake import EPS, fake_quantize, quantize
from quantbench.quant.observers import (
    OBSERVERS,
    EmaMinMaxObserver,
    EntropyObserver,
    MinMaxObserver,
    NonFiniteError,
    _Histogram,
    _kl_threshold_bin,
    compute_qparams,
    tensor_range,
)
from quantbench.quant.spec import QuantSpec

ALL = OBSERVERS.names()
PER_CHANNEL = [n for n in ALL if OBSERVERS.meta(n)["per_channel"]]
U8 = QuantSpec(bits=8, signed=False, symmetric=False)


def test_registry_has_the_documented_observers():
    assert set(ALL) >= {"minmax", "ema-minmax", "percentile", "mse", "entropy"}
    assert {"minmax", "percentile", "mse"} <= set(PER_CHANNEL) and "entropy" not in PER_CHANNEL


# ----------------------------------------------------------------------------- compute_qparams


def test_qparams_conventions():
    s, z = compute_qparams(-1.0, 2.54, QuantSpec(bits=8))  # signed symmetric: amax / qmax
    assert s.item() == pytest.approx(2.54 / 127) and z.item() == 0
    assert s.dtype == torch.float32 and z.dtype == torch.int32 and s.shape == ()
    s, z = compute_qparams(-1.0, 2.55, QuantSpec(bits=8, signed=False))  # unsigned symmetric: [0, hi]
    assert s.item() == pytest.approx(0.01) and z.item() == 0
    s, z = compute_qparams(-1.0, 2.0, U8)  # asymmetric, as ONNX DynamicQuantizeLinear
    assert s.item() == pytest.approx(3.0 / 255) and z.item() == round(0 - (-1.0) / (3.0 / 255))
    s, z = compute_qparams(0.5, 2.0, U8)  # the range is widened to contain 0
    assert z.item() == 0 and s.item() == pytest.approx(2.0 / 255)
    s, z = compute_qparams(-3.0, -1.0, U8)
    assert z.item() == 255 and s.item() == pytest.approx(3.0 / 255)


def test_qparams_guard_zero_ranges():
    for spec in (QuantSpec(), U8, QuantSpec(bits=4, signed=False)):
        s, z = compute_qparams(0.0, 0.0, spec)
        assert s.item() >= EPS > 0 and spec.qmin <= z.item() <= spec.qmax


def test_qparams_per_channel_and_non_finite():
    s, z = compute_qparams(
        torch.tensor([-1.0, -4.0]), torch.tensor([2.0, 1.0]), QuantSpec(bits=4, per_channel=True)
    )
    assert s.shape == (2,) and z.shape == (2,)
    torch.testing.assert_close(s, torch.tensor([2.0 / 7, 4.0 / 7]))
    with pytest.raises(NonFiniteError):
        compute_qparams(float("-inf"), 1.0, U8)


@settings(max_examples=100, deadline=None)
@given(
    lo=st.floats(-1e4, 1e4, width=32),
    width=st.floats(0, 1e4, width=32),
    bits=st.integers(2, 16),
    signed=st.booleans(),
    symmetric=st.booleans(),
)
def test_qparams_valid_and_zero_exact(lo, width, bits, signed, symmetric):
    spec = QuantSpec(bits=bits, signed=signed, symmetric=symmetric)
    s, z = compute_qparams(lo, lo + width, spec)
    assert s.item() > 0 and spec.qmin <= z.item() <= spec.qmax
    assert fake_quantize(torch.zeros(1), s, z, spec).item() == 0.0  # zero padding / ReLU stay exact


# ----------------------------------------------------------------------------- every observer


@pytest.mark.parametrize("name", ALL)
def test_contract_of_every_observer(name):
    obs = OBSERVERS.get(name)(U8.replace(observer=name))
    with pytest.raises(QuantbenchError, match="no data"):
        obs.qparams()
    x = torch.randn(16, 8, 4, 4)
    obs.update(x)
    obs.update(torch.empty(0))  # ignored
    lo, hi = obs.range()
    scale, zp = obs.qparams()
    assert lo.shape == hi.shape == scale.shape == zp.shape == ()
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32 and scale > 0
    assert x.min() - 1e-6 <= lo <= hi <= x.max() + 1e-6
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[0, 0, 0, 0] = bad
        with pytest.raises(NonFiniteError, match="non-finite values"):
            obs.update(y)
    obs.reset()
    with pytest.raises(QuantbenchError):
        obs.range()


@pytest.mark.parametrize("name", ALL)
def test_every_observer_handles_constant_and_zero_data(name):
    for value in (0.0, 3.0, -2.0):
        obs = OBSERVERS.get(name)(U8.replace(observer=name))
        obs.update(torch.full((100,), value))
        scale, zp = obs.qparams()
        assert torch.isfinite(scale) and scale > 0 and 0 <= zp <= 255


@pytest.mark.parametrize("name", PER_CHANNEL)
@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_scales_come_from_each_channels_own_range(name, axis):
    spec = QuantSpec(bits=8, per_channel=True, axis=axis, observer=name)
    mags = torch.tensor([0.01, 1.0, 100.0])
    shape = [1, 1, 1]
    shape[axis] = 3
    x = torch.randn(3, 3, 500) if axis == 0 else torch.randn(4, 3, 500)
    x = x / x.abs().amax(dim=[d for d in range(3) if d != axis], keepdim=True) * mags.reshape(shape)
    obs = OBSERVERS.get(name)(spec)
    obs.update(x)
    scale, zp = obs.qparams()
    assert scale.shape == zp.shape == (3,) and (zp == 0).all()
    ideal = mags / 127
    assert (scale <= ideal * 1.0001).all() and (scale >= ideal * 0.3).all()  # each its own magnitude
    if name == "minmax":
        torch.testing.assert_close(scale, ideal)


def test_per_channel_shape_errors():
    obs = MinMaxObserver(QuantSpec(per_channel=True, axis=1))
    obs.update(torch.randn(2, 5, 3))
    with pytest.raises(QuantbenchError, match="expected 5 channels"):
        obs.update(torch.randn(2, 4, 3))
    with pytest.raises(QuantbenchError, match="axis 3"):
        MinMaxObserver(QuantSpec(per_channel=True, axis=3)).update(torch.randn(2, 5, 3))
    with pytest.raises(QuantbenchError, match="per-tensor only"):
        EntropyObserver(QuantSpec(per_channel=True))


def test_tensor_range():
    x = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    lo, hi = tensor_range(x, QuantSpec())
    assert (lo.item(), hi.item()) == (-2.0, 3.0)
    lo, hi = tensor_range(x, QuantSpec(per_channel=True, axis=1))
    assert lo.tolist() == [1.0, -2.0] and hi.tolist() == [3.0, 0.5]


# ----------------------------------------------------------------------------- each on known data


def test_minmax_and_ema():
    obs = MinMaxObserver(U8)
    obs.update(torch.tensor([0.0, 1.0]))
    obs.update(torch.tensor([-1.0, 0.5]))
    assert [t.item() for t in obs.range()] == [-1.0, 1.0]
    ema = EmaMinMaxObserver(U8, momentum=0.25)
    ema.update(torch.tensor([0.0, 1.0]))
    ema.update(torch.tensor([-4.0, 5.0]))
    assert [t.item() for t in ema.range()] == [-1.0, 2.0]
    with pytest.raises(QuantbenchError, match="momentum"):
        EmaMinMaxObserver(U8, momentum=0.0)


def _heavy_tailed(n: int = 50_000) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, generator=g)
    chi2 = (torch.randn(n, 2, generator=g) ** 2).sum(dim=1)
    return z / torch.sqrt(chi2 / 2)  # Student-t, 2 degrees of freedom: heavy tails


def test_percentile_clips_outliers():
    x = torch.randn(20_000)
    x[0] = 1000.0
    spec = QuantSpec(bits=8, observer="percentile", percentile=99.9)
    obs = OBSERVERS.get("percentile")(spec)
    for chunk in x.split(2000):  # many batches: the histogram grows once the outlier arrives
        obs.update(chunk)
    lo, hi = obs.range()
    exact = torch.quantile(x.abs(), 0.999).item()
    assert hi.item() == pytest.approx(exact, rel=0.02) and hi < 10 and lo == -hi


def test_asymmetric_percentile_uses_both_tails():
    x = torch.rand(100_000) * 10 - 2  # U(-2, 8)
    obs = OBSERVERS.get("percentile")(U8.replace(observer="percentile", percentile=99.0))
    obs.update(x)
    lo, hi = obs.range()
    assert lo.item() == pytest.approx(torch.quantile(x, 0.01).item(), abs=0.02)
    assert hi.item() == pytest.approx(torch.quantile(x, 0.99).item(), abs=0.02)


def test_mse_range_is_tighter_and_better_than_minmax_on_heavy_tails():
    x = _heavy_tailed()
    spec = QuantSpec(bits=4, observer="mse")
    mse, mm = OBSERVERS.get("mse")(spec), MinMaxObserver(spec)
    mse.update(x)
    mm.update(x)
    assert mse.range()[1] < 0.5 * mm.range()[1]

    def err(obs):
        scale, zp = obs.qparams()
        return ((fake_quantize(x, scale, zp, spec) - x) ** 2).mean()

    assert err(mse) < 0.75 * err(mm)
    # no ratio of the grid does much better than the chosen one (histogram approximation)
    lo, hi = mm.range()
    best = min(
        ((fake_quantize(x, *compute_qparams(r * lo, r * hi, spec), spec) - x) ** 2).mean()
        for r in np.linspace(0.01, 1, 100)
    )
    assert err(mse) <= best * 1.05


def test_mse_per_channel_on_weights():
    w = _heavy_tailed(8 * 500).reshape(8, 500) * torch.linspace(0.1, 1.0, 8)[:, None]
    spec = QuantSpec(bits=4, per_channel=True, observer="mse")
    obs = OBSERVERS.get("mse")(spec)
    obs.update(w)
    _, hi = obs.range()
    assert (hi <= w.abs().amax(dim=1) + 1e-6).all() and (hi > 0).all()


def test_entropy_gives_a_finite_positive_clipping_range():
    x = torch.relu(_heavy_tailed(100_000))
    obs = OBSERVERS.get("entropy")(U8.replace(observer="entropy"))
    for chunk in x.split(10_000):
        obs.update(chunk)
    lo, hi = obs.range()
    assert lo.item() == 0.0 and torch.isfinite(hi) and 0 < hi < x.max()
    assert hi > torch.quantile(x, 0.9)  # clips the tail, not the body
    signed = OBSERVERS.get("entropy")(QuantSpec(bits=8, observer="entropy"))
    signed.update(_heavy_tailed(100_000))
    lo, hi = signed.range()
    assert torch.isfinite(lo) and torch.isfinite(hi) and lo < 0 < hi


def test_entropy_keeps_the_full_range_when_bits_exceed_bins():
    x = torch.randn(10_000)
    obs = OBSERVERS.get("entropy")(QuantSpec(bits=16, observer="entropy"))
    obs.update(x)
    assert [t.item() for t in obs.range()] == [x.min().item(), x.max().item()]


# ----------------------------------------------------------------------------- the histogram


@settings(max_examples=40, deadline=None)
@given(scales=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=6), seed=st.integers(0, 1000))
def test_histogram_growth_merges_bins_exactly(scales, seed):
    """Batch by batch with the range doubling == one histogram of all data at the final range."""
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randn(2, 300, generator=g) * s for s in scales]
    step = _Histogram(64)
    for b in batches:
        step.add(b)
    once = _Histogram(64)
    once.add(torch.cat(batches, dim=1))
    assert torch.equal(step.R, once.R)
    assert torch.equal(step.counts, once.counts)


def test_histogram_memory_is_bounded_over_many_batches():
    obs = OBSERVERS.get("percentile")(U8.replace(observer="percentile"))
    for i in range(50):
        obs.update(torch.randn(1000) * (i + 1))
    assert obs.hist.counts.shape == (1, 8192)
    assert obs.hist.counts.sum() == 50_000


def test_quantize_uses_observer_params_end_to_end():
    x = torch.rand(1000) * 6 - 1
    obs = OBSERVERS.get("minmax")(U8)
    obs.update(x)
    q = quantize(x, *obs.qparams(), U8)
    assert q.min() == 0 and q.max() == 255


def _nvidia_entropy_reference(bins: np.ndarray, nlev: int) -> int:
    """A literal port of NVIDIA pytorch-quantization's ``_compute_amax_entropy`` loop (stride 1)."""
    bins = bins.astype(np.float64).copy()
    bins[0] = bins[1]
    divergences, arguments = [], []
    for i in range(nlev, len(bins) + 1):
        space = np.linspace(0, i, num=nlev + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        level_counts = np.zeros(nlev)
        for idx, d in enumerate(digitized):
            if d != -1:
                level_counts[d] += bins[idx]
        for key, val in Counter(digitized.tolist()).items():
            if key != -1:
                level_counts[key] /= val
        new_density = np.array([level_counts[d] if d != -1 else 0.0 for d in digitized])
        reference = bins[:i].copy()
        reference[-1] += bins[i:].sum()
        p, q = reference / reference.sum(), new_density / new_density.sum()
        with np.errstate(divide="ignore"):
            kl = (
                np.inf
                if ((p > 0) & (q == 0)).any()
                else float(np.sum(p[p > 0] * np.log(p[p > 0] / q[p > 0])))
            )
        divergences.append(kl)
        arguments.append(i)
    divergences = np.array(divergences)
    return arguments[len(divergences) - 1 - int(np.argmin(divergences[::-1]))]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), nlev=st.sampled_from([4, 8, 16]), sparsity=st.floats(0.0, 0.6))
def test_closed_form_kl_search_equals_nvidias_loop(seed, nlev, sparsity):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(nlev + 1, 6 * nlev))
    hist = np.round(rng.exponential(50.0, n) * np.exp(-np.arange(n) / n * 3))
    hist[rng.random(n) < sparsity] = 0
    hist[-1] = max(hist[-1], 1.0)  # the histogram ends at its last non-empty bin
    hist[1] = max(hist[1], 1.0)  # else NVIDIA's loop divides 0 by 0 for small cuts (see below)
    assert _kl_threshold_bin(hist, nlev) == _nvidia_entropy_reference(hist, nlev)


def test_kl_search_skips_cuts_with_an_empty_body():
    """All mass far from 0: cuts before the data have an all-zero Q (NVIDIA's loop gets NaN there)."""
    hist = np.array([0, 0, 0, 0, 0, 8, 0, 0, 6, 7, 1, 7, 1], dtype=float)
    assert 6 <= _kl_threshold_bin(hist, 4) <= len(hist)
