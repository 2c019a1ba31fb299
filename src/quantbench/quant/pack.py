"""Dense bit packing of integer codes: what makes an INT4 model really half the size of INT8.

Layout (little-endian bit order, the same as ONNX INT4 and most INT4 kernels): each value
is stored as its ``bits`` low-order bits (two's complement when signed); value ``i``
occupies bits ``i*bits .. (i+1)*bits - 1`` of the stream, and stream bit ``k`` is bit
``k % 8`` (LSB = 0) of byte ``k // 8``. Consequences: INT8 is one two's-complement byte per
value, INT16 is little-endian ``int16``, INT4 puts value ``2j`` in the low nibble and
``2j+1`` in the high nibble of byte ``j``; an odd tail is padded with zero bits. ``n``
values take ``ceil(n * bits / 8)`` bytes (:func:`packed_nbytes`).

Everything is vectorised numpy, in chunks of 2^20 values (a multiple of 8, so chunks
start on byte boundaries) to bound temporary memory.

Example:
    >>> pack_bits([1, -1, 7], bits=4, signed=True).hex()
    'f107'
    >>> unpack_bits(bytes.fromhex("f107"), bits=4, signed=True, count=3).tolist()
    [1, -1, 7]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from quantbench.errors import QuantbenchError

MIN_BITS, MAX_BITS = 2, 16
_CHUNK = 1 << 20


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits take when packed: ``ceil(count * bits / 8)``."""
    return (int(count) * int(bits) + 7) // 8


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise QuantbenchError(f"bit width {bits!r} out of range; expected an int in {MIN_BITS}..{MAX_BITS}")


def _int_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _as_int_array(q: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    if isinstance(q, torch.Tensor):
        if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
            raise QuantbenchError(f"pack_bits expects integer codes, got a {q.dtype} tensor")
        return q.detach().cpu().reshape(-1).numpy()
    arr = np.asarray(q).reshape(-1)
    if arr.size and arr.dtype.kind not in "iu":
        raise QuantbenchError(f"pack_bits expects integer codes, got an array of {arr.dtype}")
    return arr


def pack_bits(q: torch.Tensor | np.ndarray | Sequence[int], bits: int, signed: bool) -> bytes:
    """Pack integer codes densely, ``bits`` bits each (layout in the module docstring).

    Args:
        q: Integer values, any shape (flattened in C order).
        bits: Width, 2..16.
        signed: Whether values are in ``[-2^(b-1), 2^(b-1)-1]`` (else ``[0, 2^b-1]``).

    Returns:
        ``packed_nbytes(q.size, bits)`` bytes.

    Raises:
        QuantbenchError: Bad width, non-integer input, or a value outside the range.
    """
    _check_bits(bits)
    arr = _as_int_array(q)
    lo, hi = _int_range(bits, signed)
    if arr.size:
        amin, amax = int(arr.min()), int(arr.max())
        if amin < lo or amax > hi:
            bad = amin if amin < lo else amax
            kind = "int" if signed else "uint"
            raise QuantbenchError(f"pack_bits: value {bad} out of range for {kind}{bits} ({lo}..{hi})")
    u = arr.astype(np.uint16) & np.uint16((1 << bits) - 1)  # wraps modulo 2^16: two's complement low bits
    if bits == 8:
        return u.astype(np.uint8).tobytes()
    if bits == 16:
        return u.astype("<u2").tobytes()
    if bits == 4:
        if u.size % 2:
            u = np.append(u, np.uint16(0))
        return (u[0::2] | (u[1::2] << 4)).astype(np.uint8).tobytes()
    return b"".join(_pack_generic(u[i : i + _CHUNK], bits) for i in range(0, max(u.size, 1), _CHUNK))


def _pack_generic(u: np.ndarray, bits: int) -> bytes:
    """Bit-plane packing for any width: explode to bits, keep ``bits`` per value, repack."""
    planes = np.unpackbits(u.astype("<u2").view(np.uint8).reshape(-1, 2), axis=1, bitorder="little")
    return np.packbits(planes[:, :bits].reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes | bytearray | memoryview, bits: int, signed: bool, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values as an ``int32`` array.

    Raises:
        QuantbenchError: Bad width, or ``data`` is not exactly ``packed_nbytes(count, bits)`` long.
    """
    _check_bits(bits)
    need = packed_nbytes(count, bits)
    if count < 0 or len(data) != need:
        raise QuantbenchError(
            f"unpack_bits: {len(data)} bytes cannot hold exactly {count} values of {bits} bits (expected {need})"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        u = raw.astype(np.int32)
    elif bits == 16:
        u = raw.view("<u2").astype(np.int32)
    elif bits == 4:
        u = np.empty(raw.size * 2, dtype=np.int32)
        u[0::2], u[1::2] = raw & 0x0F, raw >> 4
        u = u[:count]
    else:
        padded = np.concatenate([raw, np.zeros(2, dtype=np.uint8)]).astype(np.uint32)
        u = np.empty(count, dtype=np.int32)
        for start in range(0, count, _CHUNK):  # bounded temporaries
            offset = np.arange(start, min(start + _CHUNK, count), dtype=np.int64) * bits
            k = offset >> 3
            # A value of <= 16 bits starting anywhere in a byte lies within 3 bytes.
            word = padded[k] | (padded[k + 1] << 8) | (padded[k + 2] << 16)
            u[start : start + k.size] = (word >> (offset & 7).astype(np.uint32)) & ((1 << bits) - 1)
    u = u.astype(np.int32, copy=False)
    if signed:  # sign-extend the top bit: (u ^ s) - s with s = 2^(bits-1)
        sign = np.int32(1 << (bits - 1))
        u = np.subtract(np.bitwise_xor(u, sign), sign)
    return u
