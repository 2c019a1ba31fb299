"""Entropy coding of quantized feature maps into REAL bytes, with every byte of side information counted.

The edge sends integer symbols in ``0..qbins-1`` (``qbins`` 2..256, usually shaped ``(N, C, H, W)``);
:func:`encode` turns them into one self-describing byte string and :func:`decode` gives back the
identical array (same shape, same integer dtype). Codecs (:data:`CODECS`):

* ``range-static``: one order-0 histogram of the whole tensor, sent as side information, then a
  range coder (``constriction``) with that fixed categorical model.
* ``range-perchannel``: one histogram per channel (axis 1) - the context model that goes below the
  pooled order-0 entropy when channels have different statistics (they do in CNN features).
* ``range-adaptive``: no histogram; counts start uniform (a prior of ``alpha`` per symbol) and are
  updated as symbols are coded, in blocks (the decoder repeats the same updates, so it is exact).
* ``range-adaptive-perchannel``: the same with one adaptive model per channel - no side information
  at all, which wins for small payloads (one image) where per-channel tables cost too much.
* ``zlib`` (level 9) / ``zstd`` (level 19): general-purpose baselines on the symbols as uint8 bytes.
  ``zstd`` needs Python 3.14's ``compression.zstd`` or the ``zstandard`` package; without either it
  raises :class:`~quantbench.errors.QuantbenchError` (see :func:`available_codecs`).

Why it looks like this (known weaknesses of a published tool): its size figures left out the
probability tables, and its order-0 coder ran in pure Python one symbol at a time. Here the tables
are IN the byte string (Elias-gamma coded counts, quantized to the precision that minimises
table + payload bits), and the coding is vectorised: ``constriction`` codes a whole array with one
categorical model per call, so Python only loops over channels and adaptation blocks.

Byte string, version 1::

    b"Qc" | version | codec id | qbins-1 | dtype code | ndim | dims (LEB128 varints)
    | side information | payload | CRC-32 of everything before it (4 bytes, little-endian)

``header_bytes`` (:class:`CodedSize`) counts the framing (magic .. dims, and the CRC), ``side_bytes``
the model (histograms, or the adaptive prior's one byte), ``payload_bytes`` the coded symbols
(range coder: 32-bit little-endian words). The CRC is what turns a corrupt or truncated blob into
an error instead of a silently wrong tensor: an entropy decoder happily decodes garbage.

Sizes are from totals (never averages of ratios): ``bpp = coded bits / (N x H x W of the INPUT
images)``, ``CR = 24 x N x H x W / coded bits`` (24-bit RGB input), ``kB/sample = bytes / 1000 / N``.

Example:
    >>> import numpy as np
    >>> sym = np.random.default_rng(0).integers(0, 4, size=(2, 3, 4, 4), dtype=np.uint8)
    >>> blob = encode(sym, 4, "range-perchannel")
    >>> bool(np.array_equal(decode(blob), sym))
    True
    >>> bits_per_pixel(3072, n_images=1, height=32, width=32), compression_ratio(3072, 1, 32, 32)
    (3.0, 8.0)
"""

from __future__ import annotations

import math
import operator
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantbench.errors import QuantbenchError

__all__ = [
    "CODECS",
    "CodedSize",
    "available_codecs",
    "bits_per_pixel",
    "coded_size",
    "compression_ratio",
    "decode",
    "encode",
    "kb_per_sample",
    "measure",
    "order0_entropy_bits",
    "perchannel_entropy_bits",
]

CODECS = ("range-static", "range-perchannel", "range-adaptive", "range-adaptive-perchannel", "zlib", "zstd")
_CODEC_ID = {name: i + 1 for i, name in enumerate(CODECS)}
_PERCHANNEL = ("range-perchannel", "range-adaptive-perchannel")
_MAGIC = b"Qc"
_VERSION = 1
_CRC_BYTES = 4
# Integer dtypes a blob can restore; the index is the one-byte dtype code in the header.
_DTYPES = tuple(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"))
_MAX_SYMBOLS = 1 << 40  # a sanity bound for decoding a header; far above any feature tensor
_CHUNK = 1 << 22  # symbols converted to int32 at a time (bounds the temporary memory)
_ZLIB_LEVEL = 9
_ZSTD_LEVEL = 19
# Adaptive models: the prior is alpha = 2**-k pseudo-counts per symbol, k chosen by the encoder from
# these candidates (small alpha for sparse alphabets, ~0.5 for dense ones), and stored in one byte.
_ALPHA_EXPONENTS = tuple(range(11))
_MIN_BLOCK = 2  # first adaptation blocks; they grow by 1/4 of the symbols seen so far
_MAX_BLOCKS = 1024  # the block cap scales with the tensor so a huge tensor is ~1024 blocks, not millions


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


def _check_codec(codec: Any) -> str:
    if codec not in _CODEC_ID:
        raise QuantbenchError(f"codec: unknown codec {codec!r}; known: {', '.join(CODECS)}")
    return str(codec)


# ---------------------------------------------------------------------------------------------- zstd
def _zstd() -> tuple[Any, Any]:
    """(compress(bytes) -> bytes, decompress(bytes) -> bytes) from whichever zstd binding exists."""
    try:
        from compression import zstd as std  # type: ignore[import-not-found]  # Python >= 3.14

        return (lambda b: std.compress(b, level=_ZSTD_LEVEL)), std.decompress
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        raise QuantbenchError("codec zstd: needs Python >= 3.14 (compression.zstd) or the 'zstandard' package "
                              "(pip install 'quantbench[codec]')") from None
    return (lambda b: zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(b),
            lambda b: zstandard.ZstdDecompressor().decompress(b))


def available_codecs() -> tuple[str, ...]:
    """The codecs usable in this environment (``zstd`` only with a zstd binding)."""
    try:
        _zstd()
        return CODECS
    except QuantbenchError:
        return tuple(c for c in CODECS if c != "zstd")


def _constriction() -> Any:
    try:
        import constriction
    except ImportError:
        raise QuantbenchError("codec: the range coders need the 'constriction' package "
                              "(pip install 'quantbench[codec]'); zlib works without it") from None
    return constriction


# ---------------------------------------------------------------------------------------------- varints, gamma
def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise QuantbenchError("codec: corrupt blob (bad shape varint)")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos


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

    Blocks start at 16 symbols and grow by a quarter of what was seen (model updates are frequent
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
def encode(symbols: np.ndarray, qbins: int, codec: str = "range-perchannel") -> bytes:
    """One self-describing byte string for ``symbols`` (integers in 0..qbins-1); see the module docstring.

    Raises :class:`QuantbenchError` on a non-integer array, symbols out of range, ``qbins`` outside
    2..256, an unknown codec, a per-channel codec on a 1-D array, or zstd without a binding.
    """
    q = _check_qbins(qbins)
    codec = _check_codec(codec)
    sym = np.ascontiguousarray(_check_symbols(symbols, q))
    if codec in _PERCHANNEL and sym.ndim < 2:
        raise QuantbenchError(f"codec {codec}: needs channels on axis 1, e.g. (N, C, H, W); got shape {sym.shape}")
    if sym.size > _MAX_SYMBOLS:
        raise QuantbenchError(f"codec: {sym.size} symbols is more than this format's {_MAX_SYMBOLS}")
    dtype = np.dtype(sym.dtype).newbyteorder("=")
    header = bytearray(_MAGIC)
    header += bytes([_VERSION, _CODEC_ID[codec], q - 1, _DTYPES.index(dtype), sym.ndim])
    for d in sym.shape:
        header += _varint(int(d))
    if codec in ("zlib", "zstd"):
        raw = sym.astype(np.uint8, copy=False).tobytes()
        side, payload = b"", (zlib.compress(raw, _ZLIB_LEVEL) if codec == "zlib" else _zstd()[0](raw))
    elif codec in ("range-static", "range-perchannel"):
        side, payload = _encode_static(sym, q, codec == "range-perchannel")
    else:
        side, payload = _encode_adaptive(sym, q, codec == "range-adaptive-perchannel")
    body = bytes(header) + side + payload
    return body + zlib.crc32(body).to_bytes(_CRC_BYTES, "little")


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
@dataclass(frozen=True)
class _Parsed:
    codec: str
    qbins: int
    dtype: np.dtype
    shape: tuple[int, ...]
    header_end: int
    side_end: int
    payload_end: int
    tables: np.ndarray | None
    alpha_exp: int | None


def _parse(blob: bytes) -> _Parsed:
    """Check framing and CRC, read the header and the side information; nothing is decoded yet."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise QuantbenchError(f"codec: expected bytes to decode, got {type(blob).__name__}")
    buf = bytes(blob)
    if len(buf) < len(_MAGIC) + 5 + _CRC_BYTES or buf[:2] != _MAGIC:
        raise QuantbenchError("codec: not a quantbench feature blob (bad magic or too short)")
    end = len(buf) - _CRC_BYTES
    if zlib.crc32(buf[:end]) != int.from_bytes(buf[end:], "little"):
        raise QuantbenchError("codec: corrupt or truncated blob (CRC mismatch)")
    version, cid, qm1, dcode, ndim = buf[2:7]
    if version != _VERSION:
        raise QuantbenchError(f"codec: blob format version {version} unsupported (this reader: {_VERSION})")
    if not 1 <= cid <= len(CODECS) or dcode >= len(_DTYPES) or qm1 < 1 or ndim < 1:
        raise QuantbenchError("codec: corrupt blob (bad header)")
    codec, qbins = CODECS[cid - 1], qm1 + 1
    pos, shape = 7, []
    for _ in range(ndim):
        d, pos = _read_varint(buf, pos, end)
        shape.append(d)
    n = math.prod(shape)
    if n > _MAX_SYMBOLS or (codec in _PERCHANNEL and ndim < 2):
        raise QuantbenchError("codec: corrupt blob (bad shape)")
    header_end, tables, alpha_exp = pos, None, None
    if codec in ("range-static", "range-perchannel") and n:
        rows = shape[1] if codec == "range-perchannel" else 1
        flat, pos = _gamma_decode(buf, pos, end, rows * qbins)
        tables = flat.reshape(rows, qbins)
        if (tables.sum(axis=1) == 0).any():
            raise QuantbenchError("codec: corrupt blob (empty probability table)")
    elif codec in ("range-adaptive", "range-adaptive-perchannel"):
        if pos >= end or buf[pos] not in _ALPHA_EXPONENTS:
            raise QuantbenchError("codec: corrupt blob (bad adaptive prior)")
        alpha_exp, pos = buf[pos], pos + 1
    if codec.startswith("range-") and (end - pos) % 4:
        raise QuantbenchError("codec: corrupt blob (range-coder payload is not whole 32-bit words)")
    return _Parsed(codec, qbins, _DTYPES[dcode], tuple(shape), header_end, pos, end, tables, alpha_exp)


def coded_size(blob: bytes) -> CodedSize:
    """Split a blob's bytes into header (framing + CRC), side information and payload."""
    p = _parse(blob)
    return CodedSize(total_bytes=len(blob), header_bytes=p.header_end + _CRC_BYTES,
                     side_bytes=p.side_end - p.header_end, payload_bytes=p.payload_end - p.side_end)


def decode(blob: bytes) -> np.ndarray:
    """The exact array :func:`encode` was given (same shape; same integer dtype, native byte order)."""
    p = _parse(blob)
    buf = bytes(blob)
    payload = buf[p.side_end:p.payload_end]
    n = math.prod(p.shape)
    if p.codec in ("zlib", "zstd"):
        try:
            raw = zlib.decompress(payload) if p.codec == "zlib" else _zstd()[1](payload)
        except QuantbenchError:
            raise
        except Exception as e:  # any decompressor failure means a bad blob
            raise QuantbenchError(f"codec: corrupt blob ({p.codec} payload: {e})") from None
        flat = np.frombuffer(raw, dtype=np.uint8)
        if flat.size != n or (n and int(flat.max()) >= p.qbins):
            raise QuantbenchError(f"codec: corrupt blob ({p.codec} payload does not match the header)")
        return flat.astype(p.dtype).reshape(p.shape)
    out = np.empty(p.shape, dtype=p.dtype)
    if n == 0:
        return out
    cst = _constriction()
    perchannel = p.codec in _PERCHANNEL
    dec = cst.stream.queue.RangeDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    decoded = []
    try:
        if p.tables is not None:
            for length, f in zip(_stream_lengths(p.shape, perchannel), p.tables, strict=True):
                model = _model(cst, f)
                decoded.append(np.concatenate([dec.decode(model, min(_CHUNK, length - i))
                                               for i in range(0, length, _CHUNK)] or [np.zeros(0, np.int32)]))
        else:
            alpha = 2.0 ** -int(p.alpha_exp or 0)
            for length in _stream_lengths(p.shape, perchannel):
                seen, parts = np.full(p.qbins, alpha), []
                bd = _blocks(length, n)
                for a, b in zip(bd[:-1], bd[1:], strict=True):
                    part = dec.decode(_model(cst, seen), b - a)
                    seen = seen + np.bincount(part, minlength=p.qbins)
                    parts.append(part)
                decoded.append(np.concatenate(parts) if parts else np.zeros(0, np.int32))
    except (ValueError, KeyError, RuntimeError) as e:
        raise QuantbenchError(f"codec: corrupt blob (range decoder: {e})") from None
    if perchannel:
        rest = (p.shape[0],) + p.shape[2:]
        for c, s in enumerate(decoded):
            out[:, c] = s.reshape(rest)
    else:
        out.reshape(-1)[:] = decoded[0]
    return out


# ---------------------------------------------------------------------------------------------- measure
def measure(symbols: np.ndarray, qbins: int, codec: str) -> dict[str, Any]:
    """Encode, decode, and compare the real size with the entropy bound it should approach.

    ``bound_bits`` is the entropy the codec's model targets (per-channel for the per-channel codecs,
    pooled order-0 otherwise); ``coded_over_bound = total_bits / (bound_bits + side_bits)`` is the
    "within x % of the entropy plus side information" figure (header and coder flush count against
    it). ``coded_over_order0`` compares everything with the pooled order-0 entropy alone: below 1
    means a model beat order-0 even after paying for its tables.
    """
    q = _check_qbins(qbins)
    sym = _check_symbols(symbols, q)
    t0 = time.perf_counter()
    blob = encode(sym, q, codec)
    t1 = time.perf_counter()
    back = decode(blob)
    t2 = time.perf_counter()
    size = coded_size(blob)
    h0 = order0_entropy_bits(sym, q)
    hc = perchannel_entropy_bits(sym, q) if sym.ndim >= 2 else None
    bound = hc if codec in _PERCHANNEL and hc is not None else h0
    denom = bound + 8 * size.side_bytes

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else math.inf

    return {"codec": codec, "qbins": q, "shape": list(sym.shape), "n_symbols": int(sym.size),
            "total_bytes": size.total_bytes, "header_bytes": size.header_bytes, "side_bytes": size.side_bytes,
            "payload_bytes": size.payload_bytes, "total_bits": size.total_bits,
            "bits_per_symbol": size.total_bits / sym.size if sym.size else math.nan,
            "order0_entropy_bits": h0, "perchannel_entropy_bits": hc, "bound_bits": bound,
            "coded_over_bound": ratio(size.total_bits, denom), "coded_over_order0": ratio(size.total_bits, h0),
            "encode_s": t1 - t0, "decode_s": t2 - t1,
            "roundtrip_exact": bool(back.shape == sym.shape and np.array_equal(back, sym))}
