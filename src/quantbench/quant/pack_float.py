"""Compact, exact encodings of one tensor for the lean ``.qbm`` (format 2).

Why: a ResNet-20 with 2-bit weights holds 67 KB of codes but ~700 per-channel scales, ~700
biases and ~40 activation scales; stored as float32 (plus zero points as int32) they add 8 KB,
more than a 2-bit layer. Every encoding here is EXACT: the writer uses one only when decoding
gives back the very same float32 bits, so a file never differs from the model that was
measured. Making a model's values fit a small encoding is a separate, explicit step
(:func:`sf8_round`, :func:`q8_round`, :func:`f16_round`, used by ``save_quantized(lean=True)``
before the model is evaluated).

Encodings (``enc`` code, payload bytes for ``n`` values):

====== ===== ==========================================================================
RAW    0     the dtype's own little-endian bytes (``n * itemsize``)
F16    1     IEEE half, for float32 values that are exactly half-representable (``2n``)
ZEROS  2     every element is +0 / 0 (nothing)
CONST  3     every element has the same bits: one element (``itemsize``)
PACKED 4     integers, ``bits`` wide, as :func:`quantbench.quant.pack.pack_bits` writes them
SF8    5     positive floats ``(32 + m) * 2^(B + e - 5)``: one int8 ``B`` shared by the tensor,
             then one byte ``e << 5 | m`` per value (3-bit exponent, 5-bit mantissa): 1.6%
             worst relative rounding, a 2^8 range below the largest value (``1 + n``)
Q8     6     signed values ``q * 2^E``: one int8 ``E`` shared by the tensor, one int8 ``q`` in
             -127..127 per value (``1 + n``); the step is a power of two so every product is exact
====== ===== ==========================================================================

Example:
    >>> import torch
    >>> s = sf8_round(torch.tensor([0.0123, 0.05, 0.2]))
    >>> e = encode(s)
    >>> e.enc == SF8, len(e.data), torch.equal(decode(e), s)
    (True, 4, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from quantbench.errors import QuantbenchError
from quantbench.quant.pack import pack_bits, packed_nbytes, unpack_bits

RAW, F16, ZEROS, CONST, PACKED, SF8, Q8 = range(7)
ENCODINGS = ("raw", "f16", "zeros", "const", "packed", "sf8", "q8")
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8,
                                   torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool)
_SF8_MANT, _SF8_EXP = 32, 8  # 5 mantissa bits, 3 exponent bits


@dataclass(frozen=True)
class Encoded:
    """One tensor's encoding: what the table records (``enc``, ``dtype``, ``numel``, ``bits``/``signed`` for
    PACKED) and its payload bytes."""

    enc: int
    dtype: torch.dtype
    numel: int
    data: bytes = b""
    bits: int = 0
    signed: bool = False


def payload_nbytes(enc: int, dtype: torch.dtype, numel: int, bits: int = 0) -> int:
    """Payload bytes of an encoding of ``numel`` values (what a reader needs to slice the payload)."""
    item = torch.empty((), dtype=dtype).element_size()
    sizes = {RAW: numel * item, F16: 2 * numel, ZEROS: 0, CONST: item if numel else 0,
             PACKED: packed_nbytes(numel, bits), SF8: 1 + numel if numel else 0, Q8: 1 + numel if numel else 0}
    if enc not in sizes:
        raise QuantbenchError(f"unknown tensor encoding {enc}")
    return sizes[enc]


def _bits_of(t: Tensor) -> Tensor:
    """An integer view of ``t``'s bits (bitwise comparisons: -0.0 != 0.0, NaN == same NaN)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    if not t.is_floating_point():
        return t.to(torch.int64) if t.dtype == torch.bool else t
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _same(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits_of(a), _bits_of(b))


# ----------------------------------------------------------------------------- rounding (lean values)


def sf8_round(t: Tensor) -> Tensor:
    """Round positive float32 values to the nearest SF8 value (exponent shared per tensor).

    Values more than 2^8 below the tensor's largest become the smallest representable value
    (for per-channel scales: a nearly empty channel keeps a coarser step, never a zero one).
    Idempotent: ``sf8_round(sf8_round(t))`` equals ``sf8_round(t)``.

    Example:
        >>> sf8_round(torch.tensor([1.0, 1.02, 3.0])).tolist()
        [1.0, 1.03125, 3.0]
    """
    x = t.detach().to(torch.float32).cpu()
    if x.numel() == 0:
        return x.clone()
    if not bool(torch.isfinite(x).all()) or not bool((x > 0).all()):
        raise QuantbenchError("sf8: values must be finite and positive")
    mant, exp = torch.frexp(x)  # x = mant * 2^exp, mant in [0.5, 1)
    k = exp.to(torch.int64) - 1
    m = torch.round((mant.to(torch.float64) * 2 - 1) * _SF8_MANT).to(torch.int64)
    carry = m == _SF8_MANT
    k, m = torch.where(carry, k + 1, k), torch.where(carry, torch.zeros_like(m), m)
    base = int(k.max()) - (_SF8_EXP - 1)
    low = k < base
    k, m = torch.where(low, torch.full_like(k, base), k), torch.where(low, torch.zeros_like(m), m)
    return torch.ldexp((_SF8_MANT + m).to(torch.float32), (k - 5).to(torch.float32)).reshape(t.shape)


def q8_round(t: Tensor) -> Tensor:
    """Round float32 values to ``q * 2^E`` with q in -127..127 and one power-of-two step per tensor.

    The step is the smallest power of two with ``127 * step >= max|t|``, so the error is at most
    ``max|t| / 127`` per value. Idempotent.

    Example:
        >>> q8_round(torch.tensor([0.5, -0.26, 0.01])).tolist()
        [0.5, -0.2578125, 0.0078125]
    """
    x = t.detach().to(torch.float32).cpu()
    if not bool(torch.isfinite(x).all()):
        raise QuantbenchError("q8: values must be finite")
    peak = float(x.abs().max()) if x.numel() else 0.0
    if peak == 0.0:
        return torch.zeros_like(x)
    e = _q8_exponent(peak)
    q = torch.clamp(torch.round(x.to(torch.float64) / 2.0**e), -127, 127) + 0.0  # -0.0 -> +0.0: int8 has no -0
    return torch.ldexp(q.to(torch.float32), torch.tensor(float(e))).reshape(t.shape)


def _q8_exponent(peak: float) -> int:
    e = int(np.ceil(np.log2(peak / 127.0)))
    while 127 * 2.0**e < peak:  # log2 rounding at the edge
        e += 1
    while e > -160 and 127 * 2.0 ** (e - 1) >= peak:
        e -= 1
    return e


def f16_round(t: Tensor) -> Tensor:
    """Nearest half-precision value of each float32 value (as float32); values outside half's normal
    range are kept as they are (stored as float32), so the rounding never flushes a scale to 0."""
    x = t.detach().to(torch.float32).cpu()
    h = x.to(torch.float16).to(torch.float32)
    ok = torch.isfinite(h) & ((h.abs() >= 2.0**-14) | (x == 0))
    return torch.where(ok, h, x).reshape(t.shape)


# ----------------------------------------------------------------------------- encode / decode


def _try(enc: int, t: Tensor, bits: int = 0, signed: bool = False) -> Encoded | None:
    """``t`` in encoding ``enc`` if that encoding reproduces it exactly, else None."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    n, dtype = flat.numel(), flat.dtype
    data: bytes
    if enc == ZEROS:
        return Encoded(ZEROS, dtype, n) if not bool(_bits_of(flat).any()) else None
    if enc == CONST:
        if n == 0 or not bool((_bits_of(flat) == _bits_of(flat[:1])).all()):
            return None
        return Encoded(CONST, dtype, n, flat[:1].view(torch.uint8).numpy().tobytes())
    if enc == RAW:
        return Encoded(RAW, dtype, n, flat.view(torch.uint8).numpy().tobytes() if n else b"")
    if enc == PACKED:
        if flat.is_floating_point() or dtype == torch.bool:
            return None
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if n and (int(flat.min()) < lo or int(flat.max()) > hi):
            return None
        return Encoded(PACKED, dtype, n, pack_bits(flat, bits, signed), bits, signed)
    if dtype != torch.float32 or n == 0:
        return None
    if enc == F16:
        data = flat.to(torch.float16).view(torch.uint8).numpy().tobytes()
    elif enc == SF8:
        if not bool(torch.isfinite(flat).all()) or not bool((flat > 0).all()):
            return None
        r = sf8_round(flat)
        mant, exp = torch.frexp(r)
        k = exp.to(torch.int64) - 1
        base = int(k.max()) - (_SF8_EXP - 1)
        if not -128 <= base <= 127:
            return None
        m = torch.round((mant.to(torch.float64) * 2 - 1) * _SF8_MANT).to(torch.int64)
        data = np.int8(base).tobytes() + (((k - base) << 5) | m).to(torch.uint8).numpy().tobytes()
    elif enc == Q8:
        if not bool(torch.isfinite(flat).all()):
            return None
        peak = float(flat.abs().max())
        e = _q8_exponent(peak) if peak else 0
        if not -128 <= e <= 127:
            return None
        q = torch.clamp(torch.round(flat.to(torch.float64) / 2.0**e), -127, 127)
        data = np.int8(e).tobytes() + q.to(torch.int8).numpy().tobytes()
    else:
        raise QuantbenchError(f"unknown tensor encoding {enc}")
    out = Encoded(enc, dtype, n, data)
    return out if _same(decode(out), flat) else None


def encode(t: Tensor, prefer: tuple[int, int, bool] | None = None) -> Encoded:
    """The smallest exact encoding of ``t`` (``prefer`` = ``(enc, bits, signed)`` first, when exact).

    A preferred encoding makes the size independent of the values (a size budget can then be
    met before calibration); without one, the cheapest exact one wins, whatever it is.

    Example:
        >>> encode(torch.zeros(5, dtype=torch.int32)).enc == ZEROS
        True
    """
    if prefer is not None:
        got = _try(t=t, enc=prefer[0], bits=prefer[1], signed=prefer[2])
        if got is not None:
            return got
    flat = t.detach().cpu().reshape(-1)
    best = _try(RAW, t)
    assert best is not None
    candidates = [_try(enc, t) for enc in (ZEROS, CONST, SF8, Q8, F16)]
    if not flat.is_floating_point() and flat.dtype != torch.bool and flat.numel():
        lo, hi = int(flat.min()), int(flat.max())
        signed = lo < 0
        bits = 2
        while bits <= 16 and not (-(1 << (bits - 1)) <= lo and hi < (1 << (bits - 1)) if signed else hi < (1 << bits)):
            bits += 1
        if bits <= 16:
            candidates.append(_try(PACKED, t, bits, signed))
    for got in candidates:
        if got is not None and len(got.data) < len(best.data):
            best = got
    return best


def decode(e: Encoded) -> Tensor:
    """The flat tensor an :class:`Encoded` holds (its dtype, ``numel`` values).

    Raises:
        QuantbenchError: the payload does not have the size the encoding needs.
    """
    need = payload_nbytes(e.enc, e.dtype, e.numel, e.bits)
    if len(e.data) != need:
        raise QuantbenchError(f"{ENCODINGS[e.enc] if 0 <= e.enc < len(ENCODINGS) else e.enc} tensor of {e.numel} "
                              f"values needs {need} bytes, found {len(e.data)}")
    n, dtype = e.numel, e.dtype
    if e.enc == ZEROS:
        return torch.zeros(n, dtype=dtype)
    if n == 0:
        return torch.empty(0, dtype=dtype)
    if e.enc == RAW:
        return torch.frombuffer(bytearray(e.data), dtype=dtype).clone()
    if e.enc == CONST:
        return torch.frombuffer(bytearray(e.data), dtype=dtype).repeat(n)
    if e.enc == PACKED:
        return torch.from_numpy(unpack_bits(e.data, e.bits, e.signed, n)).to(dtype)
    if dtype != torch.float32:
        raise QuantbenchError(f"{ENCODINGS[e.enc]} encodes float32 tensors, not {dtype}")
    if e.enc == F16:
        return torch.frombuffer(bytearray(e.data), dtype=torch.float16).to(torch.float32)
    exp0 = int(np.frombuffer(e.data[:1], dtype=np.int8)[0])
    body = torch.from_numpy(np.frombuffer(e.data[1:], dtype=np.uint8).astype(np.int64))
    if e.enc == SF8:
        m, k = body & (_SF8_MANT - 1), (body >> 5) + exp0
        return torch.ldexp((_SF8_MANT + m).to(torch.float32), (k - 5).to(torch.float32))
    q = torch.from_numpy(np.frombuffer(e.data[1:], dtype=np.int8).astype(np.float32))
    return torch.ldexp(q, torch.tensor(float(exp0)))
