"""Model size in bytes, measured on disk.

Why on disk: a size is only honest if it is the size of a real file someone could ship
(DESIGN.md, "Size"): packed integers, scales and metadata included. This module measures
files and writes the FP32 reference file every compressed artifact is compared against.
Units are decimal (SI): 1 kB = 1000 B, 1 MB = 10^6 B.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.paths import torch_save_atomic

__all__ = ["file_size", "format_bytes", "save_fp32"]


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes of a file, or the total bytes of all regular files under a directory.

    A directory is accepted because some engines save a model as several files (OpenVINO's
    ``.xml`` + ``.bin``, ONNX with external data); symbolic links are not followed, so
    nothing is counted twice.

    Args:
        path: a file or a directory.

    Returns:
        The size in bytes.

    Raises:
        QuantbenchError: ``path`` does not exist.

    Example:
        >>> file_size("model_fp32.pt")  # doctest: +SKIP
        1076432
    """
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise QuantbenchError(f"file_size: {p} is a broken symbolic link")
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        total = 0
        for root, _dirs, files in os.walk(p):
            for name in files:
                f = Path(root) / name
                if f.is_file() and not f.is_symlink():
                    total += f.stat().st_size
        return total
    raise QuantbenchError(f"file_size: {p} does not exist; expected a file or a directory")


def _fp32_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict on CPU with floating tensors as float32 (shared tensors stay shared)."""
    out: dict[str, torch.Tensor] = {}
    converted: dict[int, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        if isinstance(v, torch.Tensor):
            if id(v) not in converted:
                t = v.detach()
                converted[id(v)] = t.to("cpu", torch.float32) if t.is_floating_point() else t.cpu()
            out[k] = converted[id(v)]
        else:
            out[k] = v
    return out


def save_fp32(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Save ``model.state_dict()`` (floats as float32, on CPU) with ``torch.save``; return its bytes.

    This is the FP32 reference size that compression ratios are computed against. It
    includes buffers (e.g. BatchNorm running statistics) and torch's small zip overhead, as
    any checkpoint a user would ship does. Parent directories are created.

    Args:
        model: the FP32 model.
        path: where to write the file.

    Returns:
        The size of the written file in bytes.

    Example:
        >>> save_fp32(nn.Linear(256, 1000), "/tmp/lin.pt") > 257_000 * 4  # doctest: +SKIP
        True
    """
    torch_save_atomic(_fp32_state_dict(model), path)  # a hard-linked file is replaced, not written through
    return file_size(path)


def format_bytes(n: float) -> str:
    """Human-readable size with decimal (SI) units: B, kB, MB, GB, TB; three significant digits.

    Decimal because that is what file managers, ``ls -h --si`` and papers' "MB" mean most often;
    the unit is written so nobody has to guess (1 MB = 1,000,000 bytes, not 1,048,576).

    Example:
        >>> format_bytes(1_070_000)
        '1.07 MB'
        >>> format_bytes(999)
        '999 B'
    """
    sign = "-" if n < 0 else ""
    v = float(abs(n))
    if v < 999.5:
        return f"{sign}{int(round(v))} B"
    units = ("kB", "MB", "GB", "TB", "PB")
    i = 0
    v /= 1000.0
    while v >= 999.5 and i < len(units) - 1:
        v /= 1000.0
        i += 1
    digits = 2 if v < 9.995 else 1 if v < 99.95 else 0
    return f"{sign}{v:.{digits}f} {units[i]}"
