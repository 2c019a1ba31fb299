"""The quantized-model file: one self-describing file whose size IS the reported model size.

Why our own container: ``torch.save`` stores INT4 codes one per byte (or worse, as int32),
so the "size" of a 4-bit model would be a fiction. Here integer tensors are bit-packed
(:mod:`quantbench.quant.pack`), floats are stored raw, and everything needed to rebuild the
model (plan, scales, config) sits in one JSON header that any language can read.

File layout (all integers little-endian)::

    offset 0   8 bytes   magic b"QBENCH1\\0"
    offset 8   8 bytes   uint64 H = header length in bytes (a multiple of 8)
    offset 16  H bytes   UTF-8 JSON header, padded with spaces to a multiple of 8
    offset 16+H          payload: the tensors' bytes, each starting on an 8-byte boundary
                         (offsets are relative to the payload start; gaps are zero bytes)

Header::

    {"format_version": 1,
     "meta": {...free JSON: model name, plan, config, ...},
     "payload_nbytes": N,                  # file size == 16 + H + N
     "tensors": [{"name", "kind": "packed" | "raw", "dtype", "bits", "signed", "shape",
                  "offset", "nbytes", "crc32"}, ...]}

``packed``: ``bits``-wide codes in the bit order of :mod:`quantbench.quant.pack`; ``dtype`` is
the integer dtype the codes are loaded back as. ``raw``: the tensor's bytes in its own
``dtype`` (``bits`` = element size in bits). ``crc32`` (zlib) covers each tensor's bytes so
that corruption is reported, not silently loaded. Alignment lets readers map tensors in
place; it costs at most 7 bytes per tensor.

Writes go to a temporary file in the same folder, then ``os.replace``: a crash never
leaves a half-written artefact under the real name.

Example:
    >>> import torch, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "m.qb")
    >>> n = save_artifact(path, {"model": "lenet"},
    ...                   {"w": PackedTensor(torch.tensor([-8, 7, 1]), bits=4, signed=True)})
    >>> meta, tensors = load_artifact(path)
    >>> tensors["w"].tolist(), meta["model"]
    ([-8, 7, 1], 'lenet')
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from quantbench.errors import QuantbenchError
from quantbench.paths import write_atomic
from quantbench.quant.pack import pack_bits, packed_nbytes, unpack_bits

MAGIC = b"QBENCH1\0"
FORMAT_VERSION = 1
ALIGN = 8
_PREFIX = len(MAGIC) + 8

_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool,
        torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    )
}  # fmt: skip
_INT_DTYPES = {k for k, d in _DTYPES.items() if not d.is_floating_point and d != torch.bool}


@dataclass
class PackedTensor:
    """Integer codes to be stored bit-packed, ``bits`` bits each.

    Attributes:
        values: Integer tensor (any shape; its dtype is restored on load).
        bits: Width, 2..16.
        signed: Two's-complement codes (else unsigned).
    """

    values: Tensor
    bits: int
    signed: bool

    def __post_init__(self) -> None:
        if isinstance(self.values, np.ndarray):
            self.values = torch.from_numpy(self.values)
        if (
            not isinstance(self.values, Tensor)
            or str(self.values.dtype).removeprefix("torch.") not in _INT_DTYPES
        ):
            raise QuantbenchError(
                f"PackedTensor: values must be an integer tensor, got {getattr(self.values, 'dtype', self.values)!r}"
            )

    @property
    def nbytes(self) -> int:
        """Packed size in bytes, ``ceil(numel * bits / 8)``."""
        return packed_nbytes(self.values.numel(), self.bits)


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise QuantbenchError(
            f"artifact: dtype {name} is not supported; expected one of: {', '.join(_DTYPES)}"
        )
    return name


def _encode(name: str, tensor: PackedTensor | Tensor) -> tuple[dict[str, Any], bytes]:
    if isinstance(tensor, PackedTensor):
        values = tensor.values.detach().cpu()
        data = pack_bits(values, tensor.bits, tensor.signed)
        entry = {
            "kind": "packed",
            "dtype": _dtype_name(values.dtype),
            "bits": tensor.bits,
            "signed": tensor.signed,
        }
        shape = list(values.shape)
    elif isinstance(tensor, Tensor):
        t = tensor.detach().cpu().contiguous()
        dtype = _dtype_name(t.dtype)
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        entry = {"kind": "raw", "dtype": dtype, "bits": t.element_size() * 8, "signed": t.dtype.is_signed}
        shape = list(t.shape)
    else:
        raise QuantbenchError(
            f"artifact: tensor {name!r} must be a Tensor or PackedTensor, got {type(tensor).__name__}"
        )
    return {"name": name, **entry, "shape": shape}, data


def save_artifact(path: str | Path, meta: dict[str, Any], tensors: dict[str, PackedTensor | Tensor]) -> int:
    """Write a quantized model file atomically (layout in the module docstring).

    Args:
        path: Destination; parent folders are created.
        meta: JSON-serialisable description (model name, plan ``as_dict()``, config, ...).
        tensors: Name -> :class:`PackedTensor` (bit-packed integer codes) or ``Tensor`` (raw).

    Returns:
        Bytes written, i.e. the file size: the model size quantbench reports.

    Raises:
        QuantbenchError: ``meta`` is not JSON-serialisable, or a tensor is of an unsupported type.
    """
    _check_host()
    path = Path(path)
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name:
            raise QuantbenchError(f"artifact {path}: tensor names must be non-empty strings, got {name!r}")
        entry, data = _encode(name, tensor)
        entry.update(offset=offset, nbytes=len(data), crc32=zlib.crc32(data))
        pad = -len(data) % ALIGN
        entries.append(entry)
        chunks += [data, b"\0" * pad]
        offset += len(data) + pad
    header = {"format_version": FORMAT_VERSION, "meta": meta, "payload_nbytes": offset, "tensors": entries}
    try:
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise QuantbenchError(f"artifact {path}: meta is not JSON-serialisable ({exc})") from None
    raw = text.encode("utf-8")
    raw += b" " * (-len(raw) % ALIGN)
    write_atomic(path, [MAGIC + struct.pack("<Q", len(raw)) + raw, *chunks])
    return _PREFIX + len(raw) + offset


def _check_host() -> None:
    if sys.byteorder != "little":  # pragma: no cover - every supported machine is little-endian
        raise QuantbenchError("quantbench artifacts need a little-endian machine")


def _fail(path: Path, why: str) -> QuantbenchError:
    return QuantbenchError(f"artifact {path}: {why}")


def _parse_header(path: Path, head: bytes, file_size: int) -> dict[str, Any]:
    """Validate magic, lengths and header structure; return the header dict."""
    if len(head) < _PREFIX:
        raise _fail(path, f"too short to be a quantbench artifact ({file_size} bytes)")
    if head[:8] == b"QBENCH2\0":
        raise _fail(path, "a format-2 (lean) file; read it with quantbench.quant.artifact_lean or load_quantized")
    if head[:8] != MAGIC:
        raise _fail(path, f"not a quantbench artifact (magic {head[:8]!r}, expected {MAGIC!r})")
    (hlen,) = struct.unpack("<Q", head[8:16])
    if _PREFIX + hlen > file_size:
        raise _fail(path, f"truncated: header of {hlen} bytes but the file has {file_size} bytes")
    try:
        header = json.loads(head[_PREFIX : _PREFIX + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail(path, f"corrupt header ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(header, dict) or not {"format_version", "meta", "payload_nbytes", "tensors"} <= set(
        header
    ):
        raise _fail(path, "corrupt header (missing format_version/meta/payload_nbytes/tensors)")
    if header["format_version"] != FORMAT_VERSION:
        raise _fail(
            path, f"format_version {header['format_version']!r} is not supported; expected {FORMAT_VERSION}"
        )
    payload = header["payload_nbytes"]
    if not isinstance(payload, int) or not isinstance(header["tensors"], list):
        raise _fail(path, "corrupt header (payload_nbytes/tensors have the wrong type)")
    expected = _PREFIX + hlen + payload
    if file_size < expected:
        raise _fail(path, f"truncated: expected {expected} bytes, found {file_size}")
    if file_size > expected:
        raise _fail(path, f"{file_size - expected} unexpected trailing bytes (expected {expected} bytes)")
    for entry in header["tensors"]:
        _check_entry(path, entry, payload)
    header["_payload_start"] = _PREFIX + hlen
    return header


def _check_entry(path: Path, e: Any, payload: int) -> None:
    types = {"name": str, "kind": str, "dtype": str, "bits": int, "signed": bool, "shape": list,
             "offset": int, "nbytes": int, "crc32": int}  # fmt: skip
    if not isinstance(e, dict) or any(not isinstance(e.get(k), t) for k, t in types.items()):
        raise _fail(path, f"corrupt tensor entry {e!r}")
    name, kind, dtype = e["name"], e["kind"], e["dtype"]
    if (
        kind not in ("packed", "raw")
        or dtype not in _DTYPES
        or (kind == "packed" and dtype not in _INT_DTYPES)
    ):
        raise _fail(path, f"tensor {name!r}: unsupported kind/dtype {kind}/{dtype}")
    if any(not isinstance(d, int) or d < 0 for d in e["shape"]):
        raise _fail(path, f"tensor {name!r}: bad shape {e['shape']!r}")
    numel = math.prod(e["shape"])
    if kind == "packed":
        if not 2 <= e["bits"] <= 16:
            raise _fail(path, f"tensor {name!r}: bits {e['bits']} out of range 2..16")
        need = packed_nbytes(numel, e["bits"])
    else:
        need = numel * torch.empty((), dtype=_DTYPES[dtype]).element_size()
    if e["nbytes"] != need:
        raise _fail(path, f"tensor {name!r}: header says {e['nbytes']} bytes but shape/dtype need {need}")
    if e["offset"] < 0 or e["offset"] + e["nbytes"] > payload:
        raise _fail(
            path, f"tensor {name!r}: bytes {e['offset']}..{e['offset'] + e['nbytes']} outside the payload"
        )


def read_header(path: str | Path) -> dict[str, Any]:
    """The validated JSON header of an artefact, without reading the tensors.

    Useful to list tensors, bit widths and sizes (``nbytes``) cheaply.

    Raises:
        QuantbenchError: Missing, truncated or corrupt file, naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file not found")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(_PREFIX)
        if len(head) == _PREFIX and head[:8] == MAGIC:
            head += f.read(min(struct.unpack("<Q", head[8:16])[0], size))
    header = _parse_header(path, head, size)
    header.pop("_payload_start")
    return header


def load_artifact(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read an artefact written by :func:`save_artifact`.

    Returns:
        ``(meta, tensors)``: packed tensors come back as integer tensors of their recorded
        dtype (values in the ``bits`` range), raw tensors in their own dtype and shape.

    Raises:
        QuantbenchError: Missing file, wrong magic, truncated file, header/payload mismatch
            or checksum failure, naming the file.
    """
    _check_host()
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file not found")
    blob = path.read_bytes()
    header = _parse_header(path, blob, len(blob))
    start = header["_payload_start"]
    view = memoryview(blob)
    tensors: dict[str, Tensor] = {}
    for e in header["tensors"]:
        data = view[start + e["offset"] : start + e["offset"] + e["nbytes"]]
        if zlib.crc32(data) != e["crc32"]:
            raise _fail(path, f"tensor {e['name']!r}: checksum mismatch (file corrupt)")
        dtype, shape = _DTYPES[e["dtype"]], tuple(e["shape"])
        if e["kind"] == "packed":
            codes = unpack_bits(data, e["bits"], e["signed"], math.prod(shape))
            tensors[e["name"]] = torch.from_numpy(codes).to(dtype).reshape(shape)
        elif e["nbytes"] == 0:
            tensors[e["name"]] = torch.empty(shape, dtype=dtype)
        else:
            tensors[e["name"]] = torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
    return header["meta"], tensors
