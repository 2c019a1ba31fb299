"""Counting bits: rates of coded feature maps and the entropy bounds a codec is measured against.

One job: arithmetic on sizes and histograms, independent of any byte format. :class:`CodedSize`
and the rate units (bits per input pixel, compression ratio, kB per sample) say how big a coded
blob is; :func:`order0_entropy_bits` and :func:`perchannel_entropy_bits` say how small an ideal
order-0 code (pooled, or one model per channel) could make it. It also holds the symbol and
``qbins`` checks that :mod:`quantbench.splitting.codec` shares. Everything here is re-exported by
:mod:`quantbench.splitting.codec`, the public entry point.

Sizes are from totals (never averages of ratios): ``bpp = coded bits / (N x H x W of the INPUT
images)``, ``CR = 24 x N x H x W / coded bits`` (24-bit RGB input), ``kB/sample = bytes / 1000 / N``.

Example:
    >>> import numpy as np
    >>> sym = np.array([[0, 0, 0, 0], [1, 1, 1, 1]])  # two rows, each constant
    >>> order0_entropy_bits(sym, 2), perchannel_entropy_bits(sym, 2, axis=0)
    (8.0, 0.0)
    >>> kb_per_sample(16000, n_images=2)
    1.0
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantbench.errors import QuantbenchError

__all__ = [
    "CodedSize",
    "bits_per_pixel",
    "compression_ratio",
    "kb_per_sample",
    "order0_entropy_bits",
    "perchannel_entropy_bits",
]


# ---------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class CodedSize:
    """Where the bytes of one blob go; ``header + side + payload == total``."""

    total_bytes: int
    header_bytes: int
    side_bytes: int
    payload_bytes: int

    @property
    def total_bits(self) -> int:
        return 8 * self.total_bytes

    def bpp(self, n_images: int, height: int, width: int) -> float:
        """Coded bits per INPUT pixel (see :func:`bits_per_pixel`)."""
        return bits_per_pixel(self.total_bits, n_images, height, width)

    def cr(self, n_images: int, height: int, width: int) -> float:
        """24-bit RGB input bits / coded bits (see :func:`compression_ratio`)."""
        return compression_ratio(self.total_bits, n_images, height, width)

    def kb_per_sample(self, n_images: int) -> float:
        return kb_per_sample(self.total_bits, n_images)


def _positive_pixels(what: str, n_images: int, height: int, width: int) -> int:
    for name, v in (("n_images", n_images), ("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise QuantbenchError(f"{what}: {name} must be a positive integer, got {v!r}")
    return int(n_images) * int(height) * int(width)


def bits_per_pixel(total_bits: float, n_images: int, height: int, width: int) -> float:
    """Total coded bits / (N x H x W of the input images): the rate per pixel of what the camera saw.

    Counted on the INPUT image, not on the feature map, so splits with different feature shapes
    (and JPEG/PNG of the image itself) are comparable.
    """
    return float(total_bits) / _positive_pixels("bits_per_pixel", n_images, height, width)


def compression_ratio(total_bits: float, n_images: int, height: int, width: int) -> float:
    """24-bit RGB input bits / total coded bits (from totals, not an average of per-image ratios)."""
    if not total_bits > 0:
        raise QuantbenchError(f"compression_ratio: total_bits must be > 0, got {total_bits!r}")
    return 24.0 * _positive_pixels("compression_ratio", n_images, height, width) / float(total_bits)


def kb_per_sample(total_bits: float, n_images: int) -> float:
    """Coded kilobytes per image, 1 kB = 1000 bytes (the repo's convention)."""
    _positive_pixels("kb_per_sample", n_images, 1, 1)
    return float(total_bits) / 8.0 / 1000.0 / int(n_images)


# ---------------------------------------------------------------------------------------------- entropy
def _entropy_bits(counts: np.ndarray) -> float:
    """sum over rows of n_row x H(row histogram), in bits (the ideal static code length)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim == 1:
        counts = counts[None]
    tot = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, counts * np.log2(tot / np.where(counts > 0, counts, 1.0)), 0.0)
    return float(terms.sum())


def order0_entropy_bits(symbols: np.ndarray, qbins: int) -> float:
    """Empirical order-0 entropy of all symbols pooled, times their number, in bits."""
    sym = _check_symbols(symbols, _check_qbins(qbins))
    return _entropy_bits(_bincount(sym.reshape(-1), int(qbins)))


def perchannel_entropy_bits(symbols: np.ndarray, qbins: int, axis: int = 1) -> float:
    """Sum over channels (``axis``) of each channel's own empirical order-0 entropy x its count, in bits.

    Never above :func:`order0_entropy_bits` (conditioning on the channel cannot raise entropy); the
    gap is what a per-channel model can win before paying for its tables.
    """
    q = _check_qbins(qbins)
    sym = _check_symbols(symbols, q)
    if sym.ndim < 1:
        raise QuantbenchError("perchannel_entropy_bits: symbols must have at least one axis")
    try:
        moved = np.moveaxis(sym, axis, 0)
    except (ValueError, IndexError):  # numpy's AxisError is both
        raise QuantbenchError(f"perchannel_entropy_bits: axis {axis} out of range for shape {sym.shape}") from None
    return _entropy_bits(np.stack([_bincount(ch.reshape(-1), q) for ch in moved])
                         if moved.shape[0] else np.zeros((0, q)))


def _bincount(x: np.ndarray, qbins: int) -> np.ndarray:
    """Histogram of symbols already checked to lie in 0..qbins-1 (uint64 needs a cast for bincount)."""
    return np.bincount(x.astype(np.int64) if x.dtype == np.uint64 else x, minlength=qbins)


# ---------------------------------------------------------------------------------------------- input checks
def _check_qbins(qbins: Any) -> int:
    if isinstance(qbins, bool):
        raise QuantbenchError(f"codec: qbins must be an integer in 2..256, got {qbins!r}")
    try:
        q = operator.index(qbins)
    except TypeError:
        raise QuantbenchError(f"codec: qbins must be an integer in 2..256, got {qbins!r}") from None
    if not 2 <= q <= 256:
        raise QuantbenchError(f"codec: qbins must be an integer in 2..256, got {q}")
    return q


def _check_symbols(symbols: Any, qbins: int) -> np.ndarray:
    arr = np.asarray(symbols)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise QuantbenchError(f"codec: symbols must be an integer array, got dtype {arr.dtype}")
    if arr.ndim < 1:
        raise QuantbenchError("codec: symbols must have at least one axis, got a scalar")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= qbins:
            raise QuantbenchError(f"codec: symbols must lie in 0..{qbins - 1} for qbins={qbins}, got {lo}..{hi}")
    return arr
