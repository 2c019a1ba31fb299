"""Observers: watch tensors during calibration and choose a clipping range ``(lo, hi)``.

Why several: the range decides the trade-off between clipping error (range too small) and
rounding error (range too wide). ``minmax`` never clips; ``percentile``, ``mse`` and
``entropy`` clip outliers, which matters most at low bit widths and for heavy-tailed
activations. All share one interface so that PTQ, QAT and the CLI pick them by name:

* ``Observer(spec)``; ``update(x)`` per batch; ``range() -> (lo, hi)``;
  ``qparams() -> (scale, zero_point)`` via :func:`compute_qparams`.
* Shapes: ``[]`` per tensor, ``[C]`` per channel along ``spec.axis``.
* NaN/Inf in ``update`` raise :class:`NonFiniteError`; ``range()``/``qparams()`` before any
  data raise :class:`~quantbench.errors.QuantbenchError`.

Histogram observers (``percentile``, ``mse``, ``entropy``) keep a bounded histogram per
channel over ``[-R, R]``, ``R`` a power of two that doubles when a batch exceeds it (adjacent
bins merge exactly), so memory stays fixed over any number of batches.

Example:
    >>> import torch
    >>> from quantbench.quant.spec import QuantSpec
    >>> obs = OBSERVERS.get("minmax")(QuantSpec(bits=8))
    >>> obs.update(torch.tensor([-1.0, 0.5, 2.54]))
    >>> obs.qparams()
    (tensor(0.0200), tensor(0, dtype=torch.int32))
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from quantbench.errors import QuantbenchError
from quantbench.quant.companding import companded_fake_quant
from quantbench.quant.fake import EPS
from quantbench.quant.spec import QuantSpec
from quantbench.registry import Registry


class NonFiniteError(QuantbenchError):
    """NaN or Inf reached a quantizer: the range (and every later result) would be garbage."""


OBSERVERS: Registry[type[Observer]] = Registry("observer")


def compute_qparams(lo: Tensor | float, hi: Tensor | float, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Scale and zero point that map the range ``[lo, hi]`` onto ``[qmin, qmax]``.

    The range is first widened to contain 0, so that 0 (zero padding, ReLU output) is exact.
    Signed symmetric: ``scale = max(|lo|, |hi|) / qmax``, zero point 0 (``+amax`` is exactly
    representable; ``qmin`` is used only by clipped values unless ``narrow_range``).
    Unsigned symmetric: range ``[0, hi]``, ``scale = hi / qmax``, zero point 0.
    Asymmetric: ``scale = (hi - lo) / (qmax - qmin)``,
    ``zero_point = clamp(round(qmin - lo / scale), qmin, qmax)`` (as ONNX
    ``DynamicQuantizeLinear``). ``scale`` is never below :data:`~quantbench.quant.fake.EPS`.

    Args:
        lo: Lower end(s), ``[]`` or ``[C]``.
        hi: Upper end(s), same shape.
        spec: The target spec.

    Returns:
        ``(scale float32, zero_point int32)`` of the broadcast shape of ``lo`` and ``hi``.

    Raises:
        NonFiniteError: ``lo`` or ``hi`` is NaN or infinite.
    """
    lo_t = torch.as_tensor(lo, dtype=torch.float32)
    hi_t = torch.as_tensor(hi, dtype=torch.float32)
    if not (torch.isfinite(lo_t).all() and torch.isfinite(hi_t).all()):
        raise NonFiniteError(f"non-finite quantization range ({lo_t.tolist()}, {hi_t.tolist()})")
    lo_t, hi_t = torch.clamp(lo_t, max=0.0), torch.clamp(hi_t, min=0.0)
    if spec.symmetric:
        amax = torch.maximum(-lo_t, hi_t) if spec.signed else hi_t
        scale = torch.clamp(amax / spec.qmax, min=EPS)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((hi_t - lo_t) / (spec.qmax - spec.qmin), min=EPS)
        zero_point = torch.clamp(torch.round(spec.qmin - lo_t / scale), spec.qmin, spec.qmax).to(torch.int32)
    return scale, zero_point


def _as_2d(x: Tensor, spec: QuantSpec) -> Tensor:
    """``x`` as float32 ``[C, N]``: channels along ``spec.axis`` first, or ``[1, numel]``."""
    x = x.detach().to(torch.float32)
    if not spec.per_channel:
        return x.reshape(1, -1)
    if x.dim() == 0 or not -x.dim() <= spec.axis < x.dim():
        raise QuantbenchError(
            f"per-channel axis {spec.axis} is out of range for a tensor of shape {tuple(x.shape)}"
        )
    return x.movedim(spec.axis, 0).reshape(x.shape[spec.axis], -1)


def tensor_range(x: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Min and max of ``x`` per tensor (``[]``) or per channel (``[C]``); what dynamic quantization uses."""
    x2 = _as_2d(x, spec)
    lo, hi = x2.amin(dim=1), x2.amax(dim=1)
    return (lo, hi) if spec.per_channel else (lo[0], hi[0])


class Observer:
    """Base class: input checks, channel bookkeeping, ``qparams`` from ``range``.

    Subclasses implement ``_update(x2, lo, hi)`` (``x2`` float32 ``[C, N]``, ``lo``/``hi`` its
    per-row min/max, computed once here) and ``_range()`` returning ``[C]`` tensors. They are registered on :data:`OBSERVERS` with ``per_channel`` metadata.
    """

    name: ClassVar[str] = "observer"
    per_channel_ok: ClassVar[bool] = True

    def __init__(self, spec: QuantSpec) -> None:
        if spec.per_channel and not self.per_channel_ok:
            raise QuantbenchError(f"observer {self.name!r} is per-tensor only; use per_channel=False")
        self.spec = spec
        self.batches = 0
        self.channels: int | None = None

    def update(self, x: Tensor) -> None:
        """Record one batch (or one weight tensor); empty tensors are ignored.

        Raises:
            NonFiniteError: ``x`` holds NaN or Inf.
            QuantbenchError: The channel count changed between batches.
        """
        if x.numel() == 0:
            return
        with torch.no_grad():
            x2 = _as_2d(x, self.spec)
            if self.channels is not None and x2.shape[0] != self.channels:
                raise QuantbenchError(
                    f"observer {self.name!r}: expected {self.channels} channels along axis "
                    f"{self.spec.axis}, got {x2.shape[0]}"
                )
            lo, hi = x2.amin(dim=1), x2.amax(dim=1)
            # min/max propagate NaN and Inf, so checking them is a full check at no extra pass
            if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
                raise NonFiniteError("non-finite values (NaN/Inf) observed during calibration")
            self.channels = x2.shape[0]
            self._update(x2, lo, hi)
            self.batches += 1

    def range(self) -> tuple[Tensor, Tensor]:
        """The chosen clipping range ``(lo, hi)``, float32, ``[]`` or ``[C]``."""
        if self.batches == 0:
            raise QuantbenchError(
                f"observer {self.name!r} has seen no data; run calibration (update) before asking for its range"
            )
        lo, hi = self._range()
        lo, hi = lo.to(torch.float32), hi.to(torch.float32)
        return (lo, hi) if self.spec.per_channel else (lo[0], hi[0])

    def qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale float32 > 0, zero_point int32)`` for :meth:`range` (see :func:`compute_qparams`)."""
        return compute_qparams(*self.range(), self.spec)

    def reset(self) -> None:
        """Forget everything seen."""
        self.__init__(self.spec)  # type: ignore[misc]

    def _update(self, x2: Tensor, lo: Tensor, hi: Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _range(self) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.short()}, batches={self.batches})"


@OBSERVERS.register("minmax", per_channel=True, description="running min/max: never clips")
class MinMaxObserver(Observer):
    """Running minimum and maximum over all batches: no clipping, sensitive to outliers."""

    name = "minmax"

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def _update(self, x2: Tensor, lo: Tensor, hi: Tensor) -> None:
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def _range(self) -> tuple[Tensor, Tensor]:
        assert self.lo is not None and self.hi is not None
        return self.lo, self.hi


@OBSERVERS.register("ema-minmax", per_channel=True, description="moving average of per-batch min/max")
class EmaMinMaxObserver(MinMaxObserver):
    """Exponential moving average of per-batch min/max: one odd batch moves the range little.

    Args:
        spec: The spec.
        momentum: Weight of each new batch, as in BatchNorm (``lo += m * (batch_lo - lo)``).
    """

    name = "ema-minmax"

    def __init__(self, spec: QuantSpec, momentum: float = 0.1) -> None:
        if not 0.0 < momentum <= 1.0:
            raise QuantbenchError(f"observer 'ema-minmax': momentum {momentum} out of range; expected (0, 1]")
        super().__init__(spec)
        self.momentum = momentum

    def reset(self) -> None:
        self.__init__(self.spec, self.momentum)  # type: ignore[misc]

    def _update(self, x2: Tensor, lo: Tensor, hi: Tensor) -> None:
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)


def _pow2_at_least(a: Tensor) -> Tensor:
    """Smallest power of two >= ``a`` (float64), never below 2^-24."""
    a = torch.clamp(a.to(torch.float64), min=2.0**-24)
    r = torch.exp2(torch.ceil(torch.log2(a)))
    return torch.where(r < a, r * 2, r)


class _Histogram:
    """Per-channel counts of ``x`` over ``[-R_c, R_c]`` in ``bins`` equal bins, float64.

    ``R_c`` is a power of two; when a batch exceeds it, it doubles (maybe several times)
    and groups of adjacent bins merge. Bin edges align exactly because ``bins`` is a multiple
    of 4 and the factor is a power of two, and binning divides by a power-of-two width, so
    batch-by-batch counts equal the counts of all data binned at once.
    """

    def __init__(self, bins: int) -> None:
        if bins % 4 or bins < 8:
            raise ValueError(f"histogram bins must be a multiple of 4 and >= 8, got {bins}")
        self.bins = bins
        self.counts: Tensor | None = None  # [C, bins] float64
        self.R: Tensor | None = None  # [C] float64

    def add(self, x2: Tensor, amax: Tensor | None = None) -> None:
        """Count the rows of ``x2`` (``[C, N]``); ``amax`` = per-row max of ``|x2|`` if known."""
        C, B = x2.shape[0], self.bins
        need = _pow2_at_least(x2.abs().amax(dim=1) if amax is None else amax)
        if self.counts is None or self.R is None:
            self.counts = torch.zeros(C, B, dtype=torch.float64)
            self.R = need
        elif bool((need > self.R).any()):
            grown = torch.maximum(need, self.R)
            # Any factor >= B/2 sends every old bin to the two central ones, so capping it
            # keeps the integer arithmetic small without changing the result.
            factor = torch.clamp(grown / self.R, max=2.0 * B).round().to(torch.int64)
            offset = torch.arange(B, dtype=torch.int64) - B // 2
            new_idx = torch.div(offset[None, :], factor[:, None], rounding_mode="floor") + B // 2
            merged = torch.zeros_like(self.counts)
            merged.scatter_add_(1, new_idx, self.counts)
            self.counts, self.R = merged, grown
        # The width is a power of two, so x / width is exact and every value lands in its
        # true bin (x + R would round tiny values across the edge at 0).
        width = (2 * self.R / B).to(torch.float32)[:, None]
        # Index arithmetic in floats is exact (float32 while C * B < 2^24); one int64 cast at the end.
        ftype = torch.float32 if C * B < 2**24 else torch.float64
        pos = torch.floor(x2.to(ftype) / width.to(ftype)).add_(B // 2).clamp_(0, B - 1)
        if C > 1:
            pos += torch.arange(C, dtype=ftype)[:, None] * B
        counts = torch.bincount(pos.reshape(-1).to(torch.int64), minlength=C * B)
        self.counts += counts.view(C, B).to(torch.float64)

    def width(self) -> Tensor:
        assert self.R is not None
        return 2 * self.R / self.bins

    def centres(self) -> Tensor:
        """Bin centres ``[C, bins]`` float64."""
        assert self.R is not None
        offset = torch.arange(self.bins, dtype=torch.float64) - self.bins // 2 + 0.5
        return offset[None, :] * self.width()[:, None]

    def folded(self) -> Tensor:
        """Counts of ``|x|`` over ``[0, R]`` in ``bins / 2`` bins of the same width."""
        assert self.counts is not None
        half = self.bins // 2
        return self.counts[:, half:] + self.counts[:, :half].flip(1)


def _quantile(counts: Tensor, start: Tensor, width: Tensor, q: float) -> Tensor:
    """``q``-quantile per row of a histogram with edges ``start + k * width``, linear within a bin."""
    cdf = counts.cumsum(dim=1)
    target = (q * cdf[:, -1]).clamp(min=1e-12)[:, None]
    idx = torch.searchsorted(cdf, target).clamp(max=counts.shape[1] - 1)
    before = torch.where(idx > 0, cdf.gather(1, (idx - 1).clamp(min=0)), torch.zeros_like(target))
    inbin = counts.gather(1, idx).clamp(min=1e-12)
    frac = ((target - before) / inbin).clamp(0.0, 1.0)
    return (start + (idx[:, 0] + frac[:, 0]) * width).to(torch.float64)


class _HistogramObserver(Observer):
    """Exact running min/max plus a bounded :class:`_Histogram`.

    Args:
        spec: The spec.
        bins: Histogram bins over ``[-R, R]``; default 8192 per tensor (4096 bins of ``|x|``
            over ``[0, R]``, so at least 2048 over the data) and 2048 per channel, capped so
            that ``channels * bins <= 2^23`` (64 MiB) for very wide layers.
    """

    default_bins: ClassVar[int] = 8192

    def __init__(self, spec: QuantSpec, bins: int | None = None) -> None:
        super().__init__(spec)
        self.bins_arg = bins
        self.minmax = MinMaxObserver(spec)
        self.hist: _Histogram | None = None

    def reset(self) -> None:
        self.__init__(self.spec, self.bins_arg)  # type: ignore[misc]

    def _update(self, x2: Tensor, lo: Tensor, hi: Tensor) -> None:
        # histograms (and the numpy KL search) live on the CPU, whatever the model's device
        x2, lo, hi = x2.cpu(), lo.cpu(), hi.cpu()
        if self.hist is None:
            bins = self.bins_arg
            if bins is None:
                bins = self.default_bins if x2.shape[0] == 1 else 2048
                while x2.shape[0] * bins > 2**23 and bins > 256:
                    bins //= 2
            self.hist = _Histogram(bins)
        self.minmax._update(x2, lo, hi)
        self.hist.add(x2, torch.maximum(-lo, hi))

    def _observed(self) -> tuple[Tensor, Tensor]:
        lo, hi = self.minmax._range()
        return lo.to(torch.float64), hi.to(torch.float64)


@OBSERVERS.register("percentile", per_channel=True, description="clip at spec.percentile (histogram)")
class PercentileObserver(_HistogramObserver):
    """Clip at ``spec.percentile``: of ``|x|`` for symmetric specs, of ``x`` at both tails otherwise.

    One extreme value then costs at most the clipped tail instead of stretching the step
    for every other value. The result never exceeds the observed min/max.
    """

    name = "percentile"

    def _range(self) -> tuple[Tensor, Tensor]:
        assert self.hist is not None and self.hist.R is not None and self.hist.counts is not None
        lo, hi = self._observed()
        p = self.spec.percentile / 100.0
        w = self.hist.width()
        if self.spec.symmetric:
            t = _quantile(self.hist.folded(), torch.zeros_like(w), w, p)
            return torch.maximum(lo, -t), torch.minimum(hi, t)
        start = -self.hist.R
        q_hi = _quantile(self.hist.counts, start, w, p)
        q_lo = _quantile(self.hist.counts, start, w, 1.0 - p)
        return torch.maximum(lo, q_lo), torch.minimum(hi, q_hi)


@OBSERVERS.register("mse", per_channel=True, description="range minimising quantization MSE (grid search)")
class MseObserver(_HistogramObserver):
    """The range ``r * (min, max)`` minimising the quantization MSE of the observed data.

    ``r`` runs over ``grid`` evenly spaced ratios in ``(0, 1]``; the error of each candidate
    is computed on histogram bin centres weighted by their counts, with this spec's own
    quantizer (so companded and asymmetric specs are judged as they will run).

    Args:
        spec: The spec.
        bins: See :class:`_HistogramObserver`.
        grid: Number of candidate ratios.
    """

    name = "mse"

    def __init__(self, spec: QuantSpec, bins: int | None = None, grid: int = 100) -> None:
        super().__init__(spec, bins)
        self.grid = grid

    def reset(self) -> None:
        self.__init__(self.spec, self.bins_arg, self.grid)  # type: ignore[misc]

    def _range(self) -> tuple[Tensor, Tensor]:
        assert self.hist is not None and self.hist.counts is not None
        lo, hi = self._observed()
        counts = self.hist.counts
        # Only non-empty bins matter: a flat list of (channel, centre, count) keeps the cost
        # proportional to the data (weights fill few of a channel's bins).
        ch, col = torch.nonzero(counts > 0, as_tuple=True)
        values = self.hist.centres()[ch, col].to(torch.float32)
        weights = counts[ch, col]
        companded, qmin, qmax = self.spec.companding != "none", self.spec.qmin, self.spec.qmax
        C = counts.shape[0]
        best_err = torch.full((C,), float("inf"), dtype=torch.float64)
        best_r = torch.ones(C, dtype=torch.float64)
        # All candidate ratios of a chunk at once ([k, N] tensors): a hundred small ops per layer cost
        # more in dispatch and thread wake-ups than the arithmetic (seconds per layer on a busy
        # 2-core machine); chunks keep k x N near 4M elements. Ratios run from 1 down and the first
        # minimum wins, so ties keep the widest range, as a loop from r = 1 down would.
        ratios = torch.arange(self.grid, 0, -1, dtype=torch.float64) / self.grid
        step = max(1, min(self.grid, (1 << 22) // max(1, values.numel())))
        for start in range(0, self.grid, step):
            r = ratios[start:start + step, None]
            scale, zp = compute_qparams(r * lo, r * hi, self.spec)
            s, z = scale[:, ch], zp[:, ch].to(torch.float32)
            if companded:
                err = companded_fake_quant(values, s * self.spec.qmax, self.spec) - values
            else:  # fake_quantize's arithmetic, inlined
                err = (torch.clamp(torch.round(values / s) + z, qmin, qmax) - z) * s - values
            total = torch.zeros(r.shape[0], C, dtype=torch.float64).index_add_(
                1, ch, err.to(torch.float64) ** 2 * weights
            )
            err_k, idx = total.min(dim=0)  # first minimum: the widest range of the chunk among equals
            better = err_k < best_err
            best_err = torch.where(better, err_k, best_err)
            best_r = torch.where(better, ratios[start:start + step][idx], best_r)
        return best_r * lo, best_r * hi


def _kl_threshold_bin(hist: np.ndarray, nlev: int) -> int:
    """TensorRT entropy calibration: the cut ``i`` (in bins) minimising ``KL(P_i || Q_i)``.

    As NVIDIA's calibrator: ``P_i`` is ``hist[:i]`` with the tail ``hist[i:]`` added to its last
    bin; ``Q_i`` merges ``hist[:i]`` into ``nlev`` levels (bin ``j`` -> level ``j*nlev // i``)
    and spreads each level's mass evenly over its non-empty bins; both are normalised; bin 0
    takes bin 1's count so that the ReLU spike at 0 does not dominate; ties go to the larger
    cut. Instead of building ``Q_i`` for each of the ~n candidates (O(n^2)), the divergence
    is evaluated in closed form from prefix sums, O(nlev) per candidate::

        KL = sum_j p_j log p_j - sum_k P_k log(S_k / (N_k H_i))

    with ``S_k``/``N_k`` the count/number of non-empty bins of level ``k``, ``P_k`` its share
    of ``P`` (tail included for the last level) and ``H_i = sum(hist[:i])``; it is infinite
    when the tail lands on an empty bin (``Q`` is 0 there).
    """
    h = hist.astype(np.float64).copy()
    n = h.shape[0]
    if n > 1:
        h[0] = h[1]
    total = h.sum()
    cand = np.arange(nlev, n + 1)  # [T]
    zero = np.zeros(1)
    H = np.concatenate([zero, np.cumsum(h)])  # H[i] = sum(h[:i])
    Nz = np.concatenate([zero, np.cumsum(h > 0)])
    xlogx = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    L = np.concatenate([zero, np.cumsum(xlogx)])
    tail = total - H[cand]
    last = h[cand - 1] + tail  # the cut's last bin, tail included
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = (L[cand - 1] + np.where(last > 0, last * np.log(np.where(last > 0, last, 1.0)), 0.0)) / total
        plogp -= np.log(total)  # sum p log p with p = h / total
        k = np.arange(nlev + 1)
        bounds = (k[None, :] * cand[:, None] + nlev - 1) // nlev  # [T, nlev+1] first bin of each level
        S = H[bounds[:, 1:]] - H[bounds[:, :-1]]
        N = Nz[bounds[:, 1:]] - Nz[bounds[:, :-1]]
        Pk = S.copy()
        Pk[:, -1] += tail
        logq = np.log(S / (N * H[cand][:, None]))
        cross = np.where(S > 0, Pk * logq, 0.0).sum(axis=1) / total
    kl = plogp - cross
    kl[(h[cand - 1] == 0) & (tail > 0)] = np.inf
    kl[~np.isfinite(kl)] = np.inf
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))  # the last minimum, as NVIDIA's calibrator
    return int(cand[best])


@OBSERVERS.register("entropy", per_channel=False, description="TensorRT-style KL-divergence calibration")
class EntropyObserver(_HistogramObserver):
    """TensorRT-style calibration: the ``|x|`` threshold whose quantized distribution loses least information.

    Runs KL-divergence minimisation on a ``|x|`` histogram with at least 2048 bins over the
    data, using ``2^(bits-1)`` levels for signed and ``2^bits`` for unsigned specs. The
    threshold ``T`` clips both tails: ``(max(min, -T), min(max, T))``. Per tensor only (a
    per-channel KL search on weights is slow and rarely better than ``mse``). When there are
    more levels than bins (e.g. 16 bits) no clipping can help and the full range is kept.
    """

    name = "entropy"
    per_channel_ok = False

    def _range(self) -> tuple[Tensor, Tensor]:
        assert self.hist is not None
        lo, hi = self._observed()
        folded = self.hist.folded()[0].numpy()
        w = float(self.hist.width()[0])
        nonzero = np.nonzero(folded)[0]
        used = int(nonzero[-1]) + 1 if len(nonzero) else 1
        nlev = 1 << (self.spec.bits - 1 if self.spec.signed else self.spec.bits)
        if used <= nlev:
            return lo, hi
        t = torch.tensor([_kl_threshold_bin(folded[:used], nlev) * w], dtype=torch.float64)
        return torch.maximum(lo, -t), torch.minimum(hi, t)
