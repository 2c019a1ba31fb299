"""Files and folders: names derived from user strings, and writes that never leave a partial file.

A derived name is ONE path component of safe characters, so a name such as ``../../etc`` can never
place a report or a cell folder outside the folder it belongs in. :func:`write_atomic` is how every
model file is written: a crash or a full disk leaves the previous file whole, never half of a new one.
:func:`link_identical` keeps one copy of files that are byte for byte the same (the FP32 reference that
every cell of a sweep saves), as hard links, so deleting any folder still frees what only it holds.

Example:
    >>> safe_component("../../etc/passwd"), safe_component("nets/my.py:build")
    ('etc_passwd', 'nets_my.py_build')
"""

from __future__ import annotations

import filecmp
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["link_identical", "safe_component", "torch_save_atomic", "write_atomic"]


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


def _sibling(path: Path, tag: str) -> Path:
    """A name beside ``path`` no other writer uses (process id and random bits), hidden by a leading dot."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{tag}")


def _replace_with(path: str | Path, write: Callable[[BinaryIO], int]) -> int:
    """Run ``write`` on a new temporary file beside ``path``, fsync, then rename it over ``path``.

    The temporary is created by ``open(..., "xb")`` (exclusive), so the file gets the permissions any new
    file gets (``tempfile.mkstemp`` would make it owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        with open(tmp, "xb") as f:
            written = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written


def write_atomic(path: str | Path, chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to ``path`` through a temporary file in the same folder, fsync, then rename.

    Readers see the old file or the complete new one, never a torn write (the rename is atomic on
    one file system, hence the temporary file beside the target). Parent folders are created. A
    ``path`` that is a hard link (:func:`link_identical`) is replaced, never written through, so the
    files it shared bytes with keep theirs.

    Returns:
        Bytes written.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> write_atomic(d / "a" / "f.bin", [b"ab", b"c"]), (d / "a" / "f.bin").read_bytes()
        (3, b'abc')
    """
    return _replace_with(path, lambda f: sum(f.write(chunk) for chunk in chunks))


def torch_save_atomic(obj: Any, path: str | Path) -> int:
    """``torch.save(obj, path)`` with :func:`write_atomic`'s guarantees; returns the bytes written.

    Example:
        >>> import tempfile, pathlib, torch
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> torch_save_atomic({"w": torch.ones(2)}, d / "m.pt") == (d / "m.pt").stat().st_size
        True
    """
    import torch

    def write(f: BinaryIO) -> int:
        torch.save(obj, f)
        return f.tell()

    return _replace_with(path, write)


def link_identical(path: str | Path, candidates: Iterable[str | Path]) -> Path | None:
    """Replace ``path`` by a hard link to a candidate with the same bytes; return it (None: kept).

    Why: the cells of a sweep each save the same FP32 model beside their quantized file (the size
    rows measure that file, and a cell folder is complete on its own); for a 134 M-parameter VGG16 that
    is 537 MB per cell. A hard link keeps every folder complete while the bytes are stored once, and
    deleting one folder never breaks another. Candidates of another size are skipped without reading;
    the others are tried from the largest group of links down, and one is linked only when its bytes
    equal ``path``'s (compared block by block, stopping at the first difference: two trainings of one
    architecture differ within the first tensor) and its group is at least as large as ``path``'s own
    (so files already sharing bytes are never split off to a smaller group, and calling this on every
    file of a folder in any order leaves one copy). The swap goes through a temporary link and a rename,
    so ``path`` is always a whole file; where links are impossible (another file system, no permission) ``path`` stays as it is.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a").write_bytes(b"same"), (d / "b").write_bytes(b"same")
        >>> link_identical(d / "b", [d / "a"]) == d / "a", (d / "a").stat().st_ino == (d / "b").stat().st_ino
        (True, True)
    """
    path = Path(path)
    me = path.stat()
    groups: dict[tuple[int, int], tuple[int, Path]] = {}  # one candidate per stored file (device, inode)
    for cand in map(Path, candidates):
        try:
            other = cand.stat()
        except OSError:
            continue
        key = (other.st_dev, other.st_ino)
        if other.st_size == me.st_size and key != (me.st_dev, me.st_ino) and other.st_nlink >= me.st_nlink:
            groups.setdefault(key, (other.st_nlink, cand))
    for _, cand in sorted(groups.values(), key=lambda g: -g[0]):
        if not filecmp.cmp(path, cand, shallow=False):
            continue
        tmp = _sibling(path, "link")
        try:
            os.link(cand, tmp)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return None
        return cand
    return None
