"""Quantize the feature maps sent from edge to cloud: qbins levels, uniform or mu-law, with honest side info.

``FeatureQuantizer(qbins, companding, range_mode)``:

* ``qbins`` 2..256 levels (symbols 0..qbins-1);
* ``companding="mulaw"``: compress ``t -> log(1 + mu t) / log(1 + mu)`` (``t`` the value scaled to
  [0, 1] by the range), quantize uniformly, expand - more levels near 0, where post-ReLU features
  concentrate;
* ``range_mode="sample"``: each sample's own min/max, sent as SIDE INFORMATION (two float32 per
  sample, counted by :meth:`side_bytes`); ``"calibrated"``: one range fixed once per split from
  calibration features (nothing per sample).

The step ``delta`` of the chosen range and qbins is what noise-aware training injects
(:meth:`noise`): ``U(-delta/2, delta/2)`` in the (companded) quantization domain - the known weakness
it fixes is a noise width unrelated to the real step. Only where the real quantizer's error is NOT
like that does the noise differ: the two end half-bins (``y < delta/2`` and ``y > 1 - delta/2``, which
hold each sample's min and max and, after a ReLU, the many exact zeros) are rounded onto the end
levels by the real quantizer, so they receive exactly that error instead of clamped noise (clamped
noise turns every zero into a positive value, a bias test-time quantization never has).

Example:
    >>> fq = FeatureQuantizer(qbins=4, companding="mulaw")
    >>> sym, side = fq.quantize(z)  # doctest: +SKIP
    >>> z_hat = fq.dequantize(sym, side)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from quantbench.errors import QuantbenchError

__all__ = ["COMPANDING", "RANGE_MODES", "FeatureQuantizer"]

COMPANDING = ("none", "mulaw")
RANGE_MODES = ("sample", "calibrated")


@dataclass
class FeatureQuantizer:
    """See the module docstring."""

    qbins: int
    companding: str = "none"
    mu: float = 255.0
    range_mode: str = "sample"
    lo: float | None = None  # calibrated range
    hi: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.qbins, bool) or not isinstance(self.qbins, int) or not 2 <= self.qbins <= 256:
            raise QuantbenchError(f"feature quantizer: qbins must be an integer in 2..256, got {self.qbins!r}")
        if self.companding not in COMPANDING:
            raise QuantbenchError(f"feature quantizer: companding {self.companding!r} unknown; expected none or mulaw")
        if self.range_mode not in RANGE_MODES:
            raise QuantbenchError(f"feature quantizer: range {self.range_mode!r} unknown; expected sample or "
                                  "calibrated")
        if not self.mu > 0:
            raise QuantbenchError(f"feature quantizer: mu must be > 0, got {self.mu}")

    def label(self) -> str:
        return f"q{self.qbins}-{'mulaw' if self.companding == 'mulaw' else 'uniform'}-{self.range_mode}"

    def calibrate(self, z: torch.Tensor) -> FeatureQuantizer:
        """Fix the range from calibration features (``range_mode="calibrated"``)."""
        self.lo, self.hi = float(z.min()), float(z.max())
        return self

    # ------------------------------------------------------------------ range and companding
    def _range(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (z.shape[0],) + (1,) * (z.dim() - 1)
        if self.range_mode == "calibrated":
            if self.lo is None or self.hi is None:
                raise QuantbenchError("feature quantizer: range_mode='calibrated' needs calibrate() first")
            lo = torch.full(shape, self.lo, dtype=z.dtype, device=z.device)
            hi = torch.full(shape, self.hi, dtype=z.dtype, device=z.device)
        else:
            flat = z.detach().reshape(z.shape[0], -1)
            lo, hi = flat.min(1).values.reshape(shape), flat.max(1).values.reshape(shape)
        hi = torch.maximum(hi, lo + 1e-12)
        return lo, hi

    def _compress(self, t: torch.Tensor) -> torch.Tensor:
        if self.companding == "mulaw":
            return torch.log1p(self.mu * t) / math.log1p(self.mu)
        return t

    def _expand(self, y: torch.Tensor) -> torch.Tensor:
        if self.companding == "mulaw":
            return torch.expm1(y * math.log1p(self.mu)) / self.mu
        return y

    # ------------------------------------------------------------------ quantize / dequantize
    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(symbols as uint8 in 0..qbins-1, per-sample ``(lo, hi)`` float32 side info of shape (N, 2))."""
        lo, hi = self._range(z)
        t = ((z.detach() - lo) / (hi - lo)).clamp(0.0, 1.0)
        sym = torch.round(self._compress(t) * (self.qbins - 1))
        side = torch.stack([lo.reshape(-1), hi.reshape(-1)], 1).to(torch.float32)
        return sym.to(torch.uint8), side  # qbins <= 256: one byte per symbol

    def dequantize(self, sym: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """The cloud side's reconstruction from symbols and side info."""
        shape = (sym.shape[0],) + (1,) * (sym.dim() - 1)
        lo, hi = side[:, 0].reshape(shape), side[:, 1].reshape(shape)
        t = self._expand(sym.to(torch.float32) / (self.qbins - 1))
        return lo + t * (hi - lo)

    def roundtrip(self, z: torch.Tensor) -> torch.Tensor:
        """``dequantize(quantize(z))`` (what the cloud receives)."""
        return self.dequantize(*self.quantize(z)).to(z.dtype)

    def noise(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``z`` plus the quantizer's own error model, additive in the (companded) quantization domain.

        With ``y`` the value scaled by the range (and companded) and ``delta = 1 / (qbins - 1)``:

        * interior, ``delta/2 <= y <= 1 - delta/2``: ``y + U(-delta/2, delta/2)`` (no clamping needed,
          it stays in [0, 1]);
        * end half-bins, ``y < delta/2`` or ``y > 1 - delta/2``: the real quantizer's own error, i.e.
          the value lands on the end level exactly as :meth:`quantize` puts it (no noise at all where
          ``y`` IS an end: each sample's min - the post-ReLU zeros - and max).

        The error term is detached, so the gradient to ``z`` is the identity (through the scaling
        and companding) everywhere inside the range; the range itself (per sample, or calibrated)
        is treated as a constant, as it is side information.

        Example:
            >>> fq = FeatureQuantizer(qbins=4)
            >>> z = torch.tensor([[0.0, 0.1, 0.5, 1.0]], requires_grad=True)
            >>> fq.noise(z)[0, [0, 1, 3]].tolist()  # ends and the bottom half-bin: real quantization
            [0.0, 0.0, 1.0]
        """
        lo, hi = self._range(z)
        lo, span = lo.detach(), (hi - lo).detach()
        y = self._compress(((z - lo) / span).clamp(0.0, 1.0))
        delta = 1.0 / (self.qbins - 1)
        yd = y.detach()
        sym = torch.round(yd * (self.qbins - 1))  # the symbols quantize() would send
        real_err = sym / (self.qbins - 1) - yd
        u = (torch.rand(z.shape, generator=generator, dtype=z.dtype, device=z.device) - 0.5) * delta
        end = (sym == 0) | (sym == self.qbins - 1)
        y_noisy = y + torch.where(end, real_err, u)
        return lo + self._expand(y_noisy) * span

    def side_bytes(self, n_samples: int) -> int:
        """Per-sample side information (two float32 per sample in ``sample`` mode, none when calibrated)."""
        return 8 * n_samples if self.range_mode == "sample" else 0
