"""Printing for the CLI: aligned text tables and the one-JSON-value-per-run convention.

Example:
    >>> print_table(["a", "b"], [["1", "22"]])
    a  b
    -  --
    1  22
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["emit_json", "fmt_drop", "print_table"]


def print_table(header: Sequence[str], body: Sequence[Sequence[Any]], out: Any = None) -> None:
    """Columns padded to their widest cell."""
    out = out or sys.stdout
    widths = [max(len(str(h)), *(len(str(r[i])) for r in body)) if body else len(str(h))
              for i, h in enumerate(header)]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in body:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def emit_json(obj: Any) -> None:
    """One JSON value on one line (the last stdout line of a ``--json`` run)."""
    print(json.dumps(obj, default=str))


def fmt_drop(d: dict[str, Any]) -> str:
    """``+0.12 [-0.30, +0.55] p=0.62``: a paired drop vs FP32 with its 95% CI and McNemar p."""
    return f"{d['top1_points']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] p={d['p_value']:.3g}"
