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
(:meth:`noise`): ``U(-delta/2, delta/2)`` in the (companded) quantization domain, i.e. exactly the
error the real quantizer makes - the known weakness it fixes is a noise width unrelated to the
real step.

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
        """``z`` plus the quantizer's own error model: U(-delta/2, delta/2) in the quantization domain.

        Gradients flow to ``z`` (the noise is additive); the range of each sample (or the calibrated
        one) sets ``delta = 1 / (qbins - 1)`` of the (companded) unit interval.
        """
        lo, hi = self._range(z)
        span = (hi - lo).detach()
        t = ((z - lo.detach()) / span).clamp(0.0, 1.0)
        y = self._compress(t)
        u = torch.rand(z.shape, generator=generator, dtype=z.dtype, device=z.device) - 0.5
        y = (y + u / (self.qbins - 1)).clamp(0.0, 1.0)
        return lo.detach() + self._expand(y) * span

    def side_bytes(self, n_samples: int) -> int:
        """Per-sample side information (two float32 per sample in ``sample`` mode, none when calibrated)."""
        return 8 * n_samples if self.range_mode == "sample" else 0
