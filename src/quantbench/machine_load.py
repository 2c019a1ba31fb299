"""THE busy-machine test: which latencies were timed while other processes used the CPU.

Why a module of its own: the console (``bench`` verdicts) and the report (its warning) must agree on
which numbers came from a busy machine, and the report must not import torch to ask. The load itself
(``other_cpu_share``) is recorded by :func:`quantbench.measure.latency.measure_latency`.

Example:
    >>> busy_shares([0.05, None, 0.6])
    [0.6]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["BUSY_SHARE", "busy_shares", "busy_warning"]

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
