"""What every report figure shares: the Figure record, lazy matplotlib, Pareto fronts, point labels, axes.

Why a module of its own: the figure families (accuracy, latency, split) draw with the same helpers,
and a label or axis rule fixed here is fixed in every figure.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quantbench.report.tables import variant_key

Row = dict[str, Any]


@dataclass(frozen=True)
class Figure:
    name: str
    png: bytes
    caption: str


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # long tick labels are never cut off
    _plt().close(fig)
    return buf.getvalue()


def _label(key: tuple[str, str, str]) -> str:
    model, method, engine = key
    return f"{method} / {engine}"



def _batch_axis(ax: Any, batches: Sequence[int]) -> None:
    """Log x axis labelled with the measured batch sizes themselves (1, 8, 32), not powers of ten."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(batches))))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(b) for b in sorted(set(batches))])



def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when x is a cost (lower is better) and y a score (higher is better).

    A point is dominated when another one is at least as good on both axes and strictly better
    on one; exact duplicates of a front point are on the front too. The result is ordered by x.

    Example:
        >>> pareto_front([(1.0, 50.0), (2.0, 60.0), (3.0, 55.0), (2.0, 40.0)])
        [0, 1]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
        elif front and tuple(points[i]) == tuple(points[front[-1]]):
            front.append(i)
    return front


def _join_key(r: Row) -> tuple[Any, ...]:
    """Rows about the same variant: same run (when known), model, method and engine."""
    return (r.get("run_id"), *variant_key(r))


def _point_labels(keys: Sequence[tuple[Any, ...]]) -> list[str]:
    """``method / engine``, prefixed by the model when several models share the figure."""
    several = len({k[1] for k in keys}) > 1
    return [(f"{k[1]} " if several else "") + _label(k[1:]) for k in keys]


def _clusters(xs: Sequence[float], ys: Sequence[float], tol: float = 0.04) -> list[list[int]]:
    """Points that would print on top of each other: single-linkage groups within ``tol`` of the span of a
    log x (when positive) and a linear y axis, so a chain of close points is one group, not several
    overlapping ones. Groups are sorted, and ordered by their first index.

    Example:
        >>> _clusters([1.0, 1.01, 1.02, 100.0], [50.0, 50.1, 50.2, 90.0])
        [[0, 1, 2], [3]]
    """
    import math

    fx = [math.log10(x) if x > 0 else x for x in xs]
    spans = [(max(v) - min(v)) or 1.0 for v in (fx, ys)] if len(xs) else [1.0, 1.0]
    parent = list(range(len(xs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            if abs(fx[i] - fx[j]) <= tol * spans[0] and abs(ys[i] - ys[j]) <= tol * spans[1]:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(xs)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


# Label offsets tried around a point, in typographic points: nearest rings first, eight directions each.
_OFFSETS = [(round(r * dx), round(r * dy)) for r in (6, 13, 22, 34, 50, 70)
            for dx, dy in ((1, -0.4), (1, 0.6), (-1, -0.4), (-1, 0.6), (0, 1), (0, -1.3), (0.7, -1), (-0.7, 1))]


def _annotate(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str],
              strong: set[int] | None = None) -> list[Any]:
    """Number every point (one "1,2,3" per cluster of overlapping points) and list the numbers beside the axes.

    Why this way: labels of close points used to print over each other. Each number is placed
    at the first offset (nearest first) where its box overlaps no other number, no marker and
    stays inside the axes, measured in display coordinates after the final layout; far labels
    get a leader line. A number with no free place anywhere is not drawn on the plot and the key
    says so, so two labels never overlap. Call it after the axes' scales and limits are final.
    Returns the placed annotations (the tests measure them).
    """
    fig = ax.figure
    key = "\n".join(f"{i + 1}  {lab}" + ("" if strong is None or i not in strong else "  *")
                     for i, lab in enumerate(labels))
    if strong is not None:
        key += "\n\n* on the Pareto front"
    key_text = ax.text(1.03, 1.0, key, transform=ax.transAxes, va="top", ha="left", fontsize=7, family="monospace")
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    px = [ax.transData.transform((x, y)) for x, y in zip(xs, ys, strict=True)]
    r = 4.0 * fig.dpi / 72.0  # half a marker, in pixels
    taken = [(p[0] - r, p[1] - r, p[0] + r, p[1] + r) for p in px]
    if ax.get_legend() is not None:
        lb = ax.get_legend().get_window_extent(renderer)
        taken.append((lb.x0, lb.y0, lb.x1, lb.y1))
    placed, crowded = [], []
    for g in sorted(_clusters(xs, ys), key=lambda g: (-ys[g[0]], xs[g[0]])):
        text = ",".join(str(i + 1) for i in g)
        ann = ax.annotate(text, (xs[g[0]], ys[g[0]]), textcoords="offset points", xytext=_OFFSETS[0], fontsize=7,
                          va="center", ha="left", annotation_clip=False)
        for dx, dy in _OFFSETS:
            ann.xyann = (dx, dy)
            ann.set_ha("left" if dx >= 0 else "right")
            b = ann.get_window_extent(renderer)
            box = (b.x0 - 1, b.y0 - 1, b.x1 + 1, b.y1 + 1)
            inside = frame.x0 <= box[0] and box[2] <= frame.x1 and frame.y0 <= box[1] and box[3] <= frame.y1
            if inside and not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken):
                taken.append(box)
                if abs(dx) > 13 or abs(dy) > 13:  # far from its point: the same label with a leader line
                    ann.remove()
                    ann = ax.annotate(text, (xs[g[0]], ys[g[0]]), textcoords="offset points", xytext=(dx, dy),
                                      fontsize=7, va="center", ha="left" if dx >= 0 else "right",
                                      annotation_clip=False, arrowprops={"arrowstyle": "-", "color": "0.6",
                                                                         "lw": 0.5, "shrinkA": 0, "shrinkB": 3})
                placed.append(ann)
                break
        else:
            ann.remove()
            crowded.append(text)
    if crowded:
        key_text.set_text(key + "\n\nnot numbered on the plot (no free room): " + "; ".join(crowded))
    return placed


def _plain_log_ticks(ax: Any) -> None:
    """Log x ticks printed as plain numbers (20, 30, 100), not 2 x 10^1; minor labels only within ~a decade."""
    import math

    from matplotlib.ticker import FuncFormatter, NullFormatter

    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    lo, hi = ax.get_xlim()
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(fmt if lo > 0 and math.log10(hi / lo) <= 1.3 else NullFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)


def _distinct(keys: list[tuple[Any, ...]], point: Any) -> list[tuple[Any, ...]]:
    """``keys`` without repeats of the same labelled point: sweep cells that share a model (the FP32 model
    of every cell of a PTQ grid) would otherwise plot it once per cell."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for k, label in zip(keys, _point_labels(keys), strict=True):
        if (label, *point(k)) not in seen:
            seen.add((label, *point(k)))
            out.append(k)
    return out


def _pareto_axes(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str],
                 yerr: Sequence[tuple[float, float]] | None = None, **titles: str) -> list[int]:
    """Scatter every point (log x), highlight and connect the Pareto front (step line), label each cluster.

    ``titles`` (xlabel, ylabel, title) are set before the labels are placed, so the layout the
    labels were fitted to is the final one.
    """
    front = pareto_front(list(zip(xs, ys, strict=True)))
    on = set(front)
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        e = [[yerr[i][0]], [yerr[i][1]]] if yerr else None
        ax.errorbar(x, y, yerr=e, marker="o" if i in on else "x", ms=7 if i in on else 6, capsize=2, elinewidth=0.8,
                    ecolor="#C44E5266" if i in on else "#8C8C8C55", color="#C44E52" if i in on else "#8C8C8C",
                    zorder=3 if i in on else 2)
    ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="#C44E52", lw=1.5, zorder=1,
            label="Pareto front (non-dominated)")
    ax.plot([], [], "x", color="#8C8C8C", label="dominated")
    ax.set_xscale("log")
    ax.set(**titles)
    _plain_log_ticks(ax)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    _annotate(ax, xs, ys, labels, on)
    return front


def _ci(r: Row) -> tuple[float, float]:
    e = r["extra"]
    return (r["value"] - e.get("ci_low", r["value"]), e.get("ci_high", r["value"]) - r["value"])



def zoom_percent(ax: Any, lows: Sequence[float], highs: Sequence[float], axis: str = "y") -> None:
    """Zoom a percent axis to the data and its intervals (not 0-100), padded, clamped to [0, 100].

    Example:
        >>> zoom_percent(ax, [88.0, 90.5], [91.0, 93.0])  # doctest: +SKIP
    """
    lo, hi = min(lows), max(highs)
    pad = max(0.5, 0.12 * (hi - lo))
    limits = (max(0.0, lo - pad), min(100.0, hi + pad))
    (ax.set_ylim if axis == "y" else ax.set_xlim)(*limits)


def wilson_ci(top1: float, n: Any) -> tuple[float, float]:
    """Wilson 95% interval (percent) of a stored top-1 on ``n`` images, via the one CI function of
    :mod:`quantbench.measure.accuracy`; (top1, top1) when ``n`` is unknown.

    Example:
        >>> [round(v, 1) for v in wilson_ci(50.0, 100)]
        [40.4, 59.6]
    """
    if not isinstance(n, int) or n <= 0:
        return (top1, top1)
    from quantbench.measure.accuracy import proportion_ci

    lo, hi = proportion_ci(round(top1 * n / 100.0), n)
    return (100.0 * lo, 100.0 * hi)
