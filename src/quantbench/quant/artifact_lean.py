"""The lean quantized-model container (``.qbm`` format 2): the file's bytes are the weights' bytes.

Why a second format: format 1 (:mod:`quantbench.quant.artifact`) names every tensor and its
offsets in a JSON header and aligns each tensor to 8 bytes. For ResNet-20 with 2-bit weights
that header was 28 KB beside 67 KB of codes. Here a tensor costs a few bytes of table
(compressed with the metadata), no names, no alignment; the names and shapes come from the
architecture the metadata describes (the reader rebuilds it), checked by a fingerprint.

Layout (little-endian)::

    offset 0   8 bytes   magic b"QBENCH2\\0"
    offset 8   4 bytes   uint32 H = length of the compressed header
    offset 12  4 bytes   uint32 CRC-32 (zlib) of every byte from offset 16 to the end
    offset 16  H bytes   zlib(JSON + b"\\0" + table)
    offset 16+H          payload: each tensor's encoding bytes, back to back, in table order

JSON: ``{"format_version": 2, "meta": {...}, "count": n, "fingerprint": f}``; ``f`` is
:func:`fingerprint` of the ordered tensor names the writer had. Table: per tensor ``enc``
(uint8), ``dtype`` (uint8, index into :data:`~quantbench.quant.pack_float.DTYPES`), for
PACKED one byte ``bits | signed << 7``, then ``numel`` as an unsigned LEB128 varint. The
encodings are in :mod:`quantbench.quant.pack_float`.

Example:
    >>> import torch, tempfile, os
    >>> from quantbench.quant.pack_float import encode
    >>> path = os.path.join(tempfile.mkdtemp(), "m.qbm")
    >>> n = save_lean(path, {"model": "lenet"}, ["w"], [encode(torch.tensor([-2, 1, 0]), (4, 2, True))])
    >>> n, load_lean(path)[1][0].tolist()
    (106, [-2, 1, 0])
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

from torch import Tensor

from quantbench.errors import QuantbenchError
from quantbench.paths import write_atomic
from quantbench.quant.pack_float import DTYPES, ENCODINGS, PACKED, Encoded, decode, payload_nbytes

MAGIC = b"QBENCH2\0"
FORMAT_VERSION = 2
_PREFIX = 16
_MAX_HEADER = 64 << 20  # a decompressed header larger than this is not ours (zip-bomb guard)


def fingerprint(names: list[str]) -> int:
    """CRC-32 of the ordered tensor names: tells a reader its rebuilt model lays tensors out the same way."""
    return zlib.crc32("\n".join(names).encode("utf-8"))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def save_lean(path: str | Path, meta: dict[str, Any], names: list[str], tensors: list[Encoded]) -> int:
    """Write a format-2 file atomically; returns its size in bytes (the size quantbench reports).

    Args:
        path: Destination; parent folders are created.
        meta: JSON-serialisable description (model, plan, config).
        names: The tensors' names in order (only their :func:`fingerprint` is stored).
        tensors: One :class:`~quantbench.quant.pack_float.Encoded` per name.
    """
    path = Path(path)
    if len(names) != len(tensors):
        raise QuantbenchError(f"artifact {path}: {len(names)} names for {len(tensors)} tensors")
    table = bytearray()
    for e in tensors:
        table += bytes([e.enc, DTYPES.index(e.dtype)])
        if e.enc == PACKED:
            table.append(e.bits | (0x80 if e.signed else 0))
        table += _varint(e.numel)
    head = {"format_version": FORMAT_VERSION, "meta": meta, "count": len(tensors), "fingerprint": fingerprint(names)}
    try:
        text = json.dumps(head, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise QuantbenchError(f"artifact {path}: meta is not JSON-serialisable ({exc})") from None
    header = zlib.compress(text + b"\0" + bytes(table), 9)
    body = header + b"".join(e.data for e in tensors)
    blob = MAGIC + struct.pack("<II", len(header), zlib.crc32(body)) + body
    write_atomic(path, [blob])
    return len(blob)


def is_lean(path: str | Path) -> bool:
    """Whether ``path`` starts with the format-2 magic."""
    try:
        with Path(path).open("rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _fail(path: Path, why: str) -> QuantbenchError:
    return QuantbenchError(f"artifact {path}: {why}")


def _parse(path: Path, blob: bytes, check_crc: bool) -> tuple[dict[str, Any], list[tuple[int, Any, int, int, bool]], int]:
    """(JSON header, table rows (enc, dtype, numel, bits, signed), payload start)."""
    if len(blob) < _PREFIX or blob[:8] != MAGIC:
        raise _fail(path, "not a format-2 quantbench artifact")
    hlen, crc = struct.unpack("<II", blob[8:16])
    if _PREFIX + hlen > len(blob):
        raise _fail(path, f"truncated: header of {hlen} bytes but the file has {len(blob)} bytes")
    if check_crc and zlib.crc32(blob[_PREFIX:]) != crc:
        raise _fail(path, "checksum mismatch (file corrupt or truncated)")
    try:
        z = zlib.decompressobj()
        raw = z.decompress(blob[_PREFIX:_PREFIX + hlen], _MAX_HEADER)
        if z.unconsumed_tail or not z.eof:
            raise ValueError("header does not decompress to its end")
        text, _, table = raw.partition(b"\0")
        head = json.loads(text.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise _fail(path, f"corrupt header ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") \
            from None
    if not isinstance(head, dict) or head.get("format_version") != FORMAT_VERSION or not isinstance(
            head.get("meta"), dict) or not isinstance(head.get("count"), int) or not isinstance(
            head.get("fingerprint"), int):
        raise _fail(path, "corrupt header (format_version/meta/count/fingerprint)")
    rows, at = [], 0
    try:
        for _ in range(head["count"]):
            enc, dt = table[at], table[at + 1]
            at += 2
            bits, signed = 0, False
            if enc == PACKED:
                bits, signed = table[at] & 0x7F, bool(table[at] & 0x80)
                at += 1
            numel, shift = 0, 0
            while True:
                byte = table[at]
                at += 1
                numel |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
                if shift > 56:
                    raise IndexError
            if enc >= len(ENCODINGS) or dt >= len(DTYPES) or (enc == PACKED and not 2 <= bits <= 16):
                raise _fail(path, f"tensor {len(rows)}: unsupported encoding {enc}/dtype {dt}/bits {bits}")
            rows.append((enc, DTYPES[dt], numel, bits, signed))
    except IndexError:
        raise _fail(path, "corrupt header (tensor table cut short)") from None
    if at != len(table):
        raise _fail(path, "corrupt header (bytes after the tensor table)")
    return head, rows, _PREFIX + hlen


def read_lean_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a format-2 file (``meta``, ``count``, ``fingerprint``) plus ``tensors``: one
    ``{"enc", "dtype", "numel", "bits", "signed", "nbytes"}`` per tensor, in order; tensors are not decoded."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file not found")
    blob = path.read_bytes()
    head, rows, _ = _parse(path, blob, check_crc=False)
    head["tensors"] = [{"enc": ENCODINGS[enc], "dtype": str(dt).removeprefix("torch."), "numel": n, "bits": b,
                        "signed": s, "nbytes": payload_nbytes(enc, dt, n, b)} for enc, dt, n, b, s in rows]
    return head


def load_lean(path: str | Path) -> tuple[dict[str, Any], list[Tensor]]:
    """Read a format-2 file: ``(header, flat tensors in order)``; the header as :func:`read_lean_header`.

    Raises:
        QuantbenchError: Missing, truncated, corrupt (checksum) or malformed file, naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file not found")
    blob = path.read_bytes()
    head, rows, at = _parse(path, blob, check_crc=True)
    sizes = [payload_nbytes(enc, dt, n, b) for enc, dt, n, b, _ in rows]
    if at + sum(sizes) != len(blob):
        what = "truncated" if at + sum(sizes) > len(blob) else "unexpected trailing bytes"
        raise _fail(path, f"{what}: the table needs {at + sum(sizes)} bytes, the file has {len(blob)}")
    tensors, infos = [], []
    for (enc, dt, n, b, s), size in zip(rows, sizes, strict=True):
        try:
            tensors.append(decode(Encoded(enc, dt, n, blob[at:at + size], b, s)))
        except QuantbenchError as exc:
            raise _fail(path, f"tensor {len(tensors)}: {exc}") from None
        infos.append({"enc": ENCODINGS[enc], "dtype": str(dt).removeprefix("torch."), "numel": n, "bits": b,
                      "signed": s, "nbytes": size})
        at += size
    head["tensors"] = infos
    return head, tensors
