"""Names of files and folders quantbench derives from user strings (sweep names, model sources, devices).

A derived name is ONE path component of safe characters, so a name such as ``../../etc`` can never
place a report or a cell folder outside the folder it belongs in.

Example:
    >>> safe_component("../../etc/passwd"), safe_component("nets/my.py:build")
    ('etc_passwd', 'nets_my.py_build')
"""

from __future__ import annotations

__all__ = ["safe_component"]


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
