"""What a timing may claim: THE busy-machine test, and THE test of whether two medians differ.

Why a module of its own: the console (``bench`` verdicts), ``recommend`` and the report must agree on
which numbers came from a busy machine and which differences are measurable, and the report must not
import torch to ask. The load itself
(``other_cpu_share``) is recorded by :func:`quantbench.measure.latency.measure_latency`.

Example:
    >>> busy_shares([0.05, None, 0.6])
    [0.6]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["BUSY_SHARE", "busy_shares", "busy_warning", "medians_differ"]

BUSY_SHARE = 0.2
"""Above this ``other_cpu_share`` a latency was taken on a busy machine (see :func:`busy_shares`)."""


def busy_shares(shares: Iterable[float | None], threshold: float = BUSY_SHARE) -> list[float]:
    """THE busy test: the recorded ``other_cpu_share`` values above ``threshold`` (None = not measured).

    Why one function: the console's verdicts and the report's warning must agree on which
    latencies were taken while other processes used the machine.

    Example:
        >>> busy_shares([0.05, None, 0.6, 0.3])
        [0.6, 0.3]
    """
    return [float(x) for x in shares if x is not None and x > threshold]


def busy_warning(shares: Sequence[float | None], threshold: float = BUSY_SHARE) -> str | None:
    """One line naming the load when any of ``shares`` is busy (None when the machine was quiet).

    Example:
        >>> busy_warning([0.02, 0.77, 0.6])[:52]
        'WARNING: busy machine: other processes used up to 77'
        >>> busy_warning([0.02, None]) is None
        True
    """
    busy = busy_shares(shares, threshold)
    if not busy:
        return None
    return (f"WARNING: busy machine: other processes used up to {100 * max(busy):.0f}% of the CPU while "
            f"{len(busy)} of {len(shares)} cells were timed (over {100 * threshold:.0f}%): the numbers measure "
            "the contention as much as the model, so no faster/slower verdicts; rerun on a quiet machine.")


def medians_differ(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """True when the 95% intervals of two medians do not overlap (``median_ci_low_ms``/``_high_ms`` keys).

    A cell without an interval (e.g. an old record) is never called different: no verdict
    without the evidence for one.

    Example:
        >>> medians_differ({"median_ci_low_ms": 1.0, "median_ci_high_ms": 1.2},
        ...                {"median_ci_low_ms": 1.3, "median_ci_high_ms": 1.4})
        True
    """
    keys = ("median_ci_low_ms", "median_ci_high_ms")
    if any(a.get(k) is None or b.get(k) is None for k in keys):
        return False
    return a["median_ci_high_ms"] < b["median_ci_low_ms"] or b["median_ci_high_ms"] < a["median_ci_low_ms"]
