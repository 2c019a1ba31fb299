"""What machine and software produced a number.

Why: a latency (and even an accuracy, across library versions) means nothing without the
CPU, its vector extensions, the thread count and the package versions that produced it
(DESIGN.md section 2: save git SHA, versions, CPU model and threads with every result). INT8
speed-ups in particular hinge on flags such as AVX-512 VNNI or AMX.

Everything here is best effort and NEVER raises: a missing file or tool gives ``None``.
Optional packages are looked up with ``importlib.metadata`` and never imported (importing
ray or openvino would cost seconds and side effects just to read a version).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["CPU_FLAGS", "PACKAGES", "environment", "git_sha"]

#: CPU flags (as named in /proc/cpuinfo) that decide which fast kernels an engine can use.
CPU_FLAGS: tuple[str, ...] = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)

#: Distributions whose versions are recorded (None when not installed).
PACKAGES: tuple[str, ...] = (
    "quantbench",
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "openvino",
    "ai-edge-litert",
    "litert-torch",
    "nncf",
    "constriction",
    "ray",
    "matplotlib",
)

T = TypeVar("T")


def _safe(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except Exception:  # best effort by contract
        return None


def _cpuinfo() -> dict[str, str]:
    """First processor block of /proc/cpuinfo as a dict ({} when unreadable)."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def _cpu_model(info: dict[str, str]) -> str | None:
    for key in ("model name", "Model Name", "Hardware", "cpu model", "Processor"):
        if info.get(key):
            return info[key]
    return platform.processor() or None


def _cpu_flags(info: dict[str, str]) -> dict[str, bool | None]:
    """Flags of interest: True/False when /proc/cpuinfo lists flags, None when unknown."""
    raw = info.get("flags") or info.get("Features")
    if raw is None:
        return {f: None for f in CPU_FLAGS}
    present = set(raw.split())
    flags: dict[str, bool | None] = {f: f in present for f in CPU_FLAGS}
    flags["amx"] = any(f.startswith("amx") for f in present)
    return flags


def _mem_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                value, unit = line.split()[1:3]
                return int(value) * (1024 if unit.lower() == "kb" else 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return metadata.version(dist)
    except Exception:  # PackageNotFoundError or a broken install
        return None


def _torch_info() -> dict[str, Any]:
    """Threads and CPU capability as torch sees them (torch is a core dependency)."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_cpu_capability": _safe(lambda: torch.backends.cpu.get_cpu_capability()),
    }


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def git_sha(path: str | os.PathLike[str] | None = None) -> str | None:
    """Commit of the git checkout holding quantbench's source, ``-dirty`` if it has changes.

    Why: a result can only be reproduced from the exact code; uncommitted edits (including
    untracked files, as ``git status --porcelain`` lists them) are flagged with ``-dirty``.
    Returns None when quantbench is installed outside a checkout (e.g. from a wheel) or when
    git is missing; never raises.

    Args:
        path: a directory inside the checkout; default: quantbench's own source directory.

    Returns:
        ``"<40-hex sha>"``, ``"<sha>-dirty"`` or None.

    Example:
        >>> git_sha("/")  # not a checkout
    """
    try:
        if path is None:
            import quantbench

            path = Path(quantbench.__file__).resolve().parent
        where = Path(path)
        if where.is_file():
            where = where.parent
        if not where.is_dir():
            return None
        # A package installed into a virtualenv inside some checkout is not that checkout's code.
        if _git(["check-ignore", "-q", "."], where) is not None:
            return None
        sha = _git(["rev-parse", "HEAD"], where)
        if not sha or not sha.strip():
            return None
        status = _git(["status", "--porcelain"], where)
        dirty = bool(status and status.strip())
        return sha.strip() + ("-dirty" if dirty else "")
    except Exception:  # never raise by contract
        return None


def environment() -> dict[str, Any]:
    """Describe this machine and software stack, to be stored with every result.

    Keys: ``cpu_model``, ``logical_cores``, ``cpu_flags`` (dict flag -> bool, None if unknown;
    ``amx`` = any AMX flag), ``memory_total_bytes``, ``os`` (``platform.platform()``),
    ``system``, ``machine``, ``python_version``, ``python_implementation``, ``torch_threads``,
    ``torch_interop_threads``, ``torch_cpu_capability`` (the SIMD level torch dispatches to),
    ``packages`` (dist name -> version or None), ``git_sha``.

    Never raises: any probe that fails reports None.

    Example:
        >>> env = environment()
        >>> env["logical_cores"] == os.cpu_count()
        True
    """
    info = _safe(_cpuinfo) or {}
    env: dict[str, Any] = {
        "cpu_model": _safe(lambda: _cpu_model(info)),
        "logical_cores": _safe(os.cpu_count),
        "cpu_flags": _safe(lambda: _cpu_flags(info)) or {f: None for f in CPU_FLAGS},
        "memory_total_bytes": _safe(_mem_total_bytes),
        "os": _safe(platform.platform),
        "system": _safe(platform.system),
        "machine": _safe(platform.machine),
        "python_version": _safe(platform.python_version) or sys.version.split()[0],
        "python_implementation": _safe(platform.python_implementation),
    }
    env.update(_safe(_torch_info) or {"torch_threads": None, "torch_interop_threads": None,
                                       "torch_cpu_capability": None})
    env["packages"] = {name: package_version(name) for name in PACKAGES}
    env["git_sha"] = git_sha()
    return env
