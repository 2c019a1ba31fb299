"""The range coder behind the ``range-*`` codecs: probability models, their side information, and ``constriction``.

One job: turn a checked integer tensor into (side information, payload) bytes and back, given the
codec's choices (static or adaptive model; one stream, or one per channel on axis 1). Static models
send their histograms as Elias-gamma coded counts, quantized to the precision that minimises
table + payload bits (:func:`_quantize_tables`); adaptive models send only the one-byte exponent of
their prior and update counts in blocks (:func:`_blocks`) that the decoder repeats exactly.
``constriction`` codes a whole array with one categorical model per call, so Python only loops over
channels and adaptation blocks. The framing around these bytes (header, CRC), the input checks and
the public :func:`~quantbench.splitting.codec.encode` / :func:`~quantbench.splitting.codec.decode`
are in :mod:`quantbench.splitting.codec`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from quantbench.errors import QuantbenchError
from quantbench.splitting.rate import _bincount

_CHUNK = 1 << 22  # symbols converted to int32 at a time (bounds the temporary memory)
# Adaptive models: the prior is alpha = 2**-k pseudo-counts per symbol, k chosen by the encoder from
# these candidates (small alpha for sparse alphabets, ~0.5 for dense ones), and stored in one byte.
_ALPHA_EXPONENTS = tuple(range(11))
_MIN_BLOCK = 2  # first adaptation blocks; they grow by 1/4 of the symbols seen so far
_MAX_BLOCKS = 1024  # the block cap scales with the tensor so a huge tensor is ~1024 blocks, not millions


def _constriction() -> Any:
    try:
        import constriction
    except ImportError:
        raise QuantbenchError("codec: the range coders need the 'constriction' package "
                              "(pip install 'quantbench[codec]'); zlib works without it") from None
    return constriction


# ---------------------------------------------------------------------------------------------- gamma
def _gamma_bits(values: np.ndarray) -> np.ndarray:
    """Elias-gamma code length of ``values + 1`` (so 0 costs 1 bit), elementwise."""
    v = np.asarray(values, dtype=np.float64) + 1.0
    return 2 * (np.frexp(v)[1] - 1) + 1


def _gamma_encode(values: np.ndarray) -> bytes:
    """Elias-gamma code of ``values + 1``, MSB first, vectorised; zero-padded to whole bytes.

    Counts of a histogram are mostly small or zero, and gamma codes those in 1-7 bits, where fixed
    16-bit counts would cost 16 each.
    """
    v = np.asarray(values, dtype=np.uint64).reshape(-1) + np.uint64(1)
    if v.size == 0:
        return b""
    width = (np.frexp(v.astype(np.float64))[1] - 1).astype(np.int64)  # floor(log2 v), exact below 2**53
    length = 2 * width + 1
    start = np.concatenate([[0], np.cumsum(length)[:-1]])
    bits = np.zeros(int(length.sum()), dtype=np.uint8)
    nbits = width + 1
    idx = np.repeat(np.arange(v.size), nbits)
    within = np.arange(int(nbits.sum())) - np.repeat(np.cumsum(nbits) - nbits, nbits)
    shift = (width[idx] - within).astype(np.uint64)
    bits[start[idx] + width[idx] + within] = ((v[idx] >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tobytes()


def _gamma_decode(buf: bytes, pos: int, end: int, count: int) -> tuple[np.ndarray, int]:
    """``count`` values from :func:`_gamma_encode` at byte ``pos``; returns (values, next byte position)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64), pos
    window = min(end - pos, (count * 81 + 7) // 8)  # values < 2**40 take at most 81 bits
    if window <= 0:
        raise QuantbenchError("codec: corrupt blob (side information truncated)")
    s = (np.unpackbits(np.frombuffer(buf, dtype=np.uint8, count=window, offset=pos)) + ord("0")).tobytes().decode()
    out = np.empty(count, dtype=np.int64)
    at = 0
    for i in range(count):
        one = s.find("1", at)
        width = one - at
        if one < 0 or width > 40 or one + width + 1 > len(s):
            raise QuantbenchError("codec: corrupt blob (bad side information)")
        out[i] = int(s[one:one + width + 1], 2) - 1
        at = one + width + 1
    return out, pos + (at + 7) // 8


# ---------------------------------------------------------------------------------------------- static tables
def _quantize_tables(counts: np.ndarray) -> np.ndarray:
    """Frequencies to send for histograms ``counts`` (rows of equal total): the cheapest in table+payload bits.

    Exact counts make the payload hit the empirical entropy but cost ~log2(n) bits each; counts
    scaled to a total of 2**p cost less and lose a little payload (a KL term). Every p is tried with
    the exact gamma length and the exact ideal payload, and the smallest sum wins. A symbol that
    occurs keeps a frequency >= 1, so it stays codable.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum(axis=1).max(initial=0))
    if n == 0:
        return counts
    c = counts.astype(np.float64)
    best, best_cost = counts, math.inf
    for p in range(0, max(1, math.ceil(math.log2(n))) + 1):
        total = float(1 << p)
        q = counts if total >= n else np.where(counts > 0, np.maximum(1.0, np.rint(c * total / n)), 0.0).astype(np.int64)
        qf = q.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            payload = np.where(counts > 0, c * np.log2(qf.sum(axis=1, keepdims=True) / np.where(q > 0, qf, 1.0)), 0.0)
        cost = float(payload.sum()) + float(_gamma_bits(q).sum())
        if cost < best_cost:
            best, best_cost = q, cost
        if total >= n:
            break
    return best


def _model(cst: Any, freqs: np.ndarray) -> Any:
    """A fixed categorical model; encoder and decoder build it from identical float64 arrays."""
    return cst.stream.model.Categorical(np.ascontiguousarray(freqs, dtype=np.float64), perfect=False)


# ---------------------------------------------------------------------------------------------- streams
def _streams(sym: np.ndarray, perchannel: bool) -> list[np.ndarray]:
    """The 1-D symbol sequences coded one after another: the whole tensor, or one per channel (axis 1)."""
    if not perchannel:
        return [sym.reshape(-1)]
    return [sym[:, c].reshape(-1) for c in range(sym.shape[1])]


def _stream_lengths(shape: tuple[int, ...], perchannel: bool) -> list[int]:
    n = math.prod(shape)
    if not perchannel:
        return [n]
    return [n // shape[1] if shape[1] else 0] * shape[1]


def _blocks(n: int, n_total: int) -> list[int]:
    """Adaptation block boundaries for a stream of ``n`` symbols (a pure function of the shape).

    Blocks start at ``_MIN_BLOCK`` (2) symbols and grow by a quarter of what was seen (model updates are frequent
    while the counts are still noisy), capped so a whole tensor is about 1024 blocks: a constriction
    call per block is fast, a Python-level update per symbol would not be.
    """
    cap = max(256, -(-n_total // _MAX_BLOCKS))
    bounds, pos = [0], 0
    while pos < n:
        pos = min(n, pos + min(cap, max(_MIN_BLOCK, pos // 4)))
        bounds.append(pos)
    return bounds


def _adaptive_cost(hists: list[np.ndarray], qbins: int, alpha: float) -> float:
    """Ideal code length (bits) of adaptive coding with prior ``alpha``, from the block histograms."""
    total = 0.0
    for h in hists:
        seen = np.cumsum(h, axis=0) - h  # counts before each block
        p = (seen + alpha) / (seen.sum(axis=1, keepdims=True) + qbins * alpha)
        total -= float((h * np.log2(p)).sum())
    return total


# ---------------------------------------------------------------------------------------------- encode
def _encode_static(sym: np.ndarray, qbins: int, perchannel: bool) -> tuple[bytes, bytes]:
    if sym.size == 0:
        return b"", b""
    cst = _constriction()
    streams = _streams(sym, perchannel)
    counts = np.stack([_bincount(s, qbins) for s in streams])
    freqs = _quantize_tables(counts)
    enc = cst.stream.queue.RangeEncoder()
    for s, f in zip(streams, freqs, strict=True):
        model = _model(cst, f)
        for i in range(0, s.size, _CHUNK):
            enc.encode(s[i:i + _CHUNK].astype(np.int32), model)
    return _gamma_encode(freqs), enc.get_compressed().astype("<u4").tobytes()


def _encode_adaptive(sym: np.ndarray, qbins: int, perchannel: bool) -> tuple[bytes, bytes]:
    cst = _constriction()
    streams = _streams(sym, perchannel)
    bounds = [_blocks(s.size, sym.size) for s in streams]
    hists = [np.stack([_bincount(s[a:b], qbins) for a, b in zip(bd[:-1], bd[1:], strict=True)])
             if s.size else np.zeros((0, qbins), dtype=np.int64) for s, bd in zip(streams, bounds, strict=True)]
    k = min(_ALPHA_EXPONENTS, key=lambda e: _adaptive_cost(hists, qbins, 2.0 ** -e))
    alpha = 2.0 ** -k
    enc = cst.stream.queue.RangeEncoder()
    for s, bd, h in zip(streams, bounds, hists, strict=True):
        seen = np.full(qbins, alpha)
        for j, (a, b) in enumerate(zip(bd[:-1], bd[1:], strict=True)):
            enc.encode(s[a:b].astype(np.int32), _model(cst, seen))
            seen = seen + h[j]
    return bytes([k]), enc.get_compressed().astype("<u4").tobytes()


# ---------------------------------------------------------------------------------------------- decode
def _decode_range(payload: bytes, shape: tuple[int, ...], dtype: np.dtype, qbins: int, perchannel: bool,
                  tables: np.ndarray | None, alpha_exp: int | None) -> np.ndarray:
    """The symbols of a range-coder ``payload`` (static ``tables``, else the adaptive prior ``alpha_exp``)."""
    n = math.prod(shape)
    out = np.empty(shape, dtype=dtype)
    if n == 0:
        return out
    cst = _constriction()
    dec = cst.stream.queue.RangeDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    decoded = []
    try:
        if tables is not None:
            for length, f in zip(_stream_lengths(shape, perchannel), tables, strict=True):
                model = _model(cst, f)
                decoded.append(np.concatenate([dec.decode(model, min(_CHUNK, length - i))
                                               for i in range(0, length, _CHUNK)] or [np.zeros(0, np.int32)]))
        else:
            alpha = 2.0 ** -int(alpha_exp or 0)
            for length in _stream_lengths(shape, perchannel):
                seen, parts = np.full(qbins, alpha), []
                bd = _blocks(length, n)
                for a, b in zip(bd[:-1], bd[1:], strict=True):
                    part = dec.decode(_model(cst, seen), b - a)
                    seen = seen + np.bincount(part, minlength=qbins)
                    parts.append(part)
                decoded.append(np.concatenate(parts) if parts else np.zeros(0, np.int32))
    except (ValueError, KeyError, RuntimeError) as e:
        raise QuantbenchError(f"codec: corrupt blob (range decoder: {e})") from None
    if perchannel:
        rest = (shape[0],) + shape[2:]
        for c, s in enumerate(decoded):
            out[:, c] = s.reshape(rest)
    else:
        out.reshape(-1)[:] = decoded[0]
    return out
