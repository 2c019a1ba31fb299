"""Progress bars for the steps that take more than a few seconds (calibration, AdaRound, exports...).

Why one helper: every bar must behave the same way - on stderr (so ``--json`` stdout stays one
clean line), silent when the user said ``--no-progress`` / ``progress=False`` (library calls are
silent by default), gone once its step ends (``leave=False``) so the console keeps only results.
Lines that must survive a bar (a per-layer summary) go through :func:`note`, which prints above a
live bar instead of tearing it.

Example:
    >>> with bar(total=3, desc="demo", enabled=False) as b:
    ...     for _ in range(3):
    ...         b.update(1)
    >>> note("printed only when enabled", enabled=False)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["bar", "note"]


def bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
        enabled: bool = True) -> Any:
    """A tqdm bar on stderr that draws nothing when ``enabled`` is False.

    Args:
        iterable: Items to wrap (or None and call ``update``).
        total: Expected count (default: ``len(iterable)`` where it has one).
        desc: What is progressing, e.g. ``"calibrate"``, ``"adaround layer 3/20 conv1"``.
        unit: Unit of one step (``"img"``, ``"layer"``, ``"iter"``, ``"model"``).
        enabled: False: no output at all (tqdm's ``disable``).

    Returns:
        A ``tqdm`` object (iterate it, or ``update`` and ``close`` it / use it as a context manager).
    """
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=False, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


def note(message: str, *, enabled: bool = True) -> None:
    """Print ``message`` on stderr above any live bar (nothing when ``enabled`` is False)."""
    if enabled:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
