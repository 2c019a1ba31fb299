"""Files and folders: names derived from user strings, and writes that never leave a partial file.

A derived name is ONE path component of safe characters, so a name such as ``../../etc`` can never
place a report or a cell folder outside the folder it belongs in. :func:`write_atomic` is how every
model file is written: a crash or a full disk leaves the previous file whole, never half of a new one.

Example:
    >>> safe_component("../../etc/passwd"), safe_component("nets/my.py:build")
    ('etc_passwd', 'nets_my.py_build')
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["safe_component", "write_atomic"]


def safe_component(text: str, fallback: str = "unnamed", limit: int = 120) -> str:
    """``text`` as one path component: letters, digits, ``-_.`` kept, runs of others become ``_``."""
    out, prev = [], ""
    for ch in str(text):
        c = ch if ch.isalnum() or ch in "-_." else "_"
        if c == "_" and prev == "_":
            continue
        out.append(c)
        prev = c
    name = "".join(out).strip("._")[:limit]
    return name or fallback


def write_atomic(path: str | Path, chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to ``path`` through a temporary file in the same folder, fsync, then rename.

    Readers see the old file or the complete new one, never a torn write (the rename is atomic on
    one file system, hence the temporary file beside the target). Parent folders are created.

    Returns:
        Bytes written.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> write_atomic(d / "a" / "f.bin", [b"ab", b"c"]), (d / "a" / "f.bin").read_bytes()
        (3, b'abc')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    written = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                written += f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return written
