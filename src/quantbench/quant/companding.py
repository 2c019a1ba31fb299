"""Mu-law companding: non-uniform quantization levels, dense near zero.

Why: weights (and many features) are bell-shaped, so most values sit near 0 where a
uniform grid spends few levels. Compressing with mu-law before a uniform quantizer and
expanding afterwards puts more levels where the mass is, at the same bit width.

Conventions: a companded spec is symmetric (zero point 0) and shares its ``scale`` with the
uniform quantizer of the same spec, so switching companding on keeps the meaning of the
calibrated parameters: the clipping magnitude is ``scale_max = scale * qmax``. The integer
code of ``x`` is ``round(compress(x / scale_max) * qmax)``, i.e. the compressed value is
quantized uniformly on ``[-1, 1]`` (signed: ``2^b - 1`` codes ``-qmax..qmax``, symmetric so
that 0 and +-max are exact) or ``[0, 1]`` (unsigned: ``2^b`` codes ``0..qmax``).

Example:
    >>> import torch
    >>> x = torch.tensor([-1.0, -0.01, 0.0, 0.5])
    >>> torch.allclose(expand(compress(x, 255.0), 255.0), x, atol=1e-6)
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from quantbench.quant.spec import QuantSpec


def compress(x: Tensor, mu: float) -> Tensor:
    """Mu-law compressor on [-1, 1]: ``sign(x) * ln(1 + mu|x|) / ln(1 + mu)``.

    ``log1p`` keeps precision for tiny ``|x|``, where the curve matters most.
    """
    return torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)


def expand(y: Tensor, mu: float) -> Tensor:
    """Exact inverse of :func:`compress`: ``sign(y) * ((1 + mu)^|y| - 1) / mu``."""
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu


def companded_quantize(x: Tensor, scale_max: Tensor, spec: QuantSpec) -> Tensor:
    """Integer codes (int32) of ``x`` on the mu-law grid; ``scale_max`` must broadcast to ``x``."""
    lo = -1.0 if spec.signed else 0.0
    y = compress(torch.clamp(x / scale_max, lo, 1.0), spec.mu)
    q = torch.round(y * spec.qmax)
    return torch.clamp(q, -spec.qmax if spec.signed else 0, spec.qmax).to(torch.int32)


def companded_dequantize(q: Tensor, scale_max: Tensor, spec: QuantSpec) -> Tensor:
    """Real values (float32) of mu-law codes ``q``."""
    return expand(q.to(torch.float32) / spec.qmax, spec.mu) * scale_max


def companded_fake_quant(x: Tensor, scale_max: Tensor | float, spec: QuantSpec) -> Tensor:
    """Normalise by the range, compress, quantize uniformly, expand, rescale (no gradient rule).

    Args:
        x: Values to quantize.
        scale_max: Clipping magnitude (``scale * qmax``), broadcastable to ``x``.
        spec: A spec with ``companding="mulaw"`` (its ``mu``, ``bits``, ``signed`` are used).

    Returns:
        The values on the non-uniform grid, float32, same shape as ``x``.
    """
    s = torch.as_tensor(scale_max, dtype=torch.float32, device=x.device)
    return companded_dequantize(companded_quantize(x, s, spec), s, spec)
