"""Report figures (matplotlib, imported lazily with the Agg backend).

Each function takes store rows and returns a :class:`Figure` (PNG bytes + caption) or None
when the run has nothing to plot. Captions say what was measured, on what, in which units.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quantbench.report.tables import histories, human_count, variant_key

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
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    return buf.getvalue()


def _label(key: tuple[str, str, str]) -> str:
    model, method, engine = key
    return f"{method} / {engine}"


def training_curves(rows: Sequence[Row]) -> Figure | None:
    """Loss and top-1 per epoch (train and validation) for every trained variant."""
    hist = histories(rows)
    if not hist:
        return None
    plt = _plt()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, metrics in hist.items():
        for name, style in (("train_loss", "-"), ("val_loss", "--")):
            if name in metrics:
                e, v = zip(*metrics[name], strict=True)
                ax_loss.plot(e, v, style, marker="o", ms=3, label=f"{label} {name.split('_')[0]}")
        for name, style in (("train_top1", "-"), ("val_top1", "--")):
            if name in metrics:
                e, v = zip(*metrics[name], strict=True)
                ax_acc.plot(e, v, style, marker="o", ms=3, label=f"{label} {name.split('_')[0]}")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy (nats)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return Figure("training_curves", _png(fig),
                  "Training curves: mean cross-entropy and top-1 accuracy per epoch on the training split "
                  "(solid, measured during the epoch) and the validation split (dashed, after the epoch).")


def accuracy_bars(rows: Sequence[Row]) -> Figure | None:
    """Top-1 per variant with its 95% confidence interval."""
    pts = [r for r in rows if r["metric"] == "top1" and r["value"] is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(pts) + 2), 3.6))
    labels = [_label(variant_key(r)) for r in pts]
    vals = [r["value"] for r in pts]
    lo = [r["value"] - r["extra"].get("ci_low", r["value"]) for r in pts]
    hi = [r["extra"].get("ci_high", r["value"]) - r["value"] for r in pts]
    ax.bar(range(len(pts)), vals, yerr=[lo, hi], capsize=4, color="#4C72B0")
    for i, v in enumerate(vals):
        ax.text(i, v / 2, f"{v:.2f}", ha="center", color="white", fontsize=8)
    ax.set_xticks(range(len(pts)), labels, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="top-1 (%)", ylim=(0, 100), title="accuracy on the evaluation split")
    ax.grid(axis="y", alpha=0.3)
    n = pts[0]["extra"].get("n_images", "?")
    return Figure("accuracy", _png(fig),
                  f"Top-1 accuracy (%) on the same {n} evaluation images for every variant; error bars are "
                  "95% Wilson confidence intervals.")


def _batch_axis(ax: Any, batches: Sequence[int]) -> None:
    """Log x axis labelled with the measured batch sizes themselves (1, 8, 32), not powers of ten."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(batches))))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(b) for b in sorted(set(batches))])


def latency_vs_batch(rows: Sequence[Row]) -> Figure | None:
    """Median latency (with p90) and throughput against batch size per variant; one row per model."""
    med: dict[tuple[str, str, str], list[tuple[int, float, float]]] = defaultdict(list)
    threads = "?"
    for r in rows:
        if r["metric"] == "latency_median_ms":
            med[variant_key(r)].append((r["batch"], r["value"], r["extra"].get("p90_ms", r["value"])))
            threads = r["extra"].get("threads", threads)
    if not med:
        return None
    models = sorted({k[0] for k in med})
    plt = _plt()
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.8 * len(models)), squeeze=False)
    for row, model in zip(axes, models, strict=True):
        ax_l, ax_t = row
        batches: list[int] = []
        for key, pts in sorted(med.items()):
            if key[0] != model:
                continue
            pts.sort()
            b, m, p90 = zip(*pts, strict=True)
            batches += b
            ax_l.errorbar(b, m, yerr=[[0] * len(m), [max(0.0, q - x) for q, x in zip(p90, m, strict=True)]], marker="o",
                          capsize=3, label=_label(key))
            ax_t.plot(b, [bb / (mm / 1000.0) for bb, mm in zip(b, m, strict=True)], marker="o", label=_label(key))
        ax_l.set(yscale="log", xlabel="batch size", ylabel="latency per batch (ms)", title=f"{model}: latency")
        ax_t.set(xlabel="batch size", ylabel="images / s", title=f"{model}: throughput")
        for ax in (ax_l, ax_t):
            _batch_axis(ax, batches)
            ax.grid(alpha=0.3, which="both")
        ax_t.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return Figure("latency_vs_batch", _png(fig),
                  f"Latency of one batch (median, bar up to p90) and throughput (batch / median) against batch "
                  f"size; {threads} thread(s), after warm-up, on this machine's CPU.")


def macs_vs_batch(rows: Sequence[Row]) -> Figure | None:
    """MACs per batch against batch size (linear by construction; shown for scale)."""
    pts: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r["metric"] == "macs_batch":
            pts[variant_key(r)].append((r["batch"], r["value"]))
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for key, p in pts.items():
        p.sort()
        b, v = zip(*p, strict=True)
        ax.plot(b, v, marker="o", label=_label(key))
    ax.set(yscale="log", xlabel="batch size", ylabel="MACs per batch", title="compute")
    _batch_axis(ax, [b for p in pts.values() for b, _ in p])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return Figure("macs_vs_batch", _png(fig),
                  "Multiply-accumulates (MACs) per batch against batch size, counted on conv/linear layers; "
                  "FLOPs = 2 x MACs.")


def size_bars(rows: Sequence[Row]) -> Figure | None:
    """Bytes on disk of each variant's saved file."""
    pts = [r for r in rows if r["metric"] == "size_bytes" and r["value"]]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(pts) + 2), 3.6))
    vals = [r["value"] / 1e3 for r in pts]
    ax.bar(range(len(pts)), vals, color="#55A868")
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.1f} kB", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(pts)), [_label(variant_key(r)) for r in pts], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="kB on disk (1 kB = 1000 B)", title="model size")
    ax.grid(axis="y", alpha=0.3)
    return Figure("model_size", _png(fig),
                  "Size on disk: bytes of each saved model file (FP32 state dict, or the packed quantized file "
                  "with scales and zero-points included).")


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
    """Points that would print on top of each other (within ``tol`` of the span of a log x and a linear y axis)."""
    import math

    fx = [math.log10(x) if x > 0 else x for x in xs]
    spans = [(max(v) - min(v)) or 1.0 for v in (fx, ys)]
    groups: list[list[int]] = []
    for i in sorted(range(len(xs)), key=lambda i: (fx[i], -ys[i])):
        for g in groups:
            j = g[0]
            if abs(fx[i] - fx[j]) <= tol * spans[0] and abs(ys[i] - ys[j]) <= tol * spans[1]:
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def _annotate(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str],
              strong: set[int] | None = None) -> None:
    """Number every point (one "1,2,3" per cluster of overlapping points) and list the numbers beside the axes."""
    for g in _clusters(xs, ys):
        ax.annotate(",".join(str(i + 1) for i in g), (xs[g[0]], ys[g[0]]), textcoords="offset points",
                    xytext=(5, -3), fontsize=7, va="top")
    key = "\n".join(f"{i + 1}  {lab}" + ("" if strong is None or i not in strong else "  *")
                     for i, lab in enumerate(labels))
    if strong is not None:
        key += "\n\n* on the Pareto front"
    ax.text(1.03, 1.0, key, transform=ax.transAxes, va="top", ha="left", fontsize=7, family="monospace")


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
                 yerr: Sequence[tuple[float, float]] | None = None) -> list[int]:
    """Scatter every point (log x), highlight and connect the Pareto front (step line), label each cluster."""
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
    _annotate(ax, xs, ys, labels, on)
    _plain_log_ticks(ax)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    return front


def _ci(r: Row) -> tuple[float, float]:
    e = r["extra"]
    return (r["value"] - e.get("ci_low", r["value"]), e.get("ci_high", r["value"]) - r["value"])


def accuracy_vs_size(rows: Sequence[Row]) -> Figure | None:
    """Top-1 against bytes on disk per variant, with the accuracy/size Pareto front highlighted."""
    acc = {_join_key(r): r for r in rows if r["metric"] == "top1" and r["value"] is not None}
    size = {_join_key(r): r["value"] for r in rows if r["metric"] == "size_bytes" and r["value"]}
    keys = _distinct([k for k in acc if k in size], lambda k: (size[k], acc[k]["value"]))
    if len(keys) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    front = _pareto_axes(ax, [size[k] / 1e3 for k in keys], [acc[k]["value"] for k in keys], _point_labels(keys),
                         [_ci(acc[k]) for k in keys])
    ax.set(xlabel="size on disk (kB, 1 kB = 1000 B)", ylabel="top-1 (%)",
           title="accuracy vs size (Pareto front)")
    n = acc[keys[0]]["extra"].get("n_images", "?")
    names = ", ".join(_point_labels([keys[i] for i in front]))
    return Figure("accuracy_vs_size", _png(fig),
                  f"Top-1 (%, 95% CI) on the same {n} test images against the bytes of each saved model file "
                  "(packed integers with scales for quantized models). The red step line joins the "
                  f"non-dominated variants (no other variant is both smaller and at least as accurate): {names}. "
                  "Up and to the left is better.")


def accuracy_vs_latency(rows: Sequence[Row]) -> Figure | None:
    """Top-1 against measured median latency at one stated batch size, with the Pareto front.

    Accuracy and latency rows are joined on the same run, model and method (variant label); the
    accuracy of the same engine when measured, else the variant's PyTorch (simulation) accuracy,
    which the engine-parity contract keeps within tolerance of the deployed one. The batch
    is the one measured for the most joined variants, the smallest on ties (batch 1 when every
    variant has it).
    """
    tops = [r for r in rows if r["metric"] == "top1" and r["value"] is not None]
    by_variant = {_join_key(r)[:3]: r for r in sorted(tops, key=lambda r: r["engine"] == "torch")}
    acc = {_join_key(r): r for r in tops}
    lat: dict[tuple[Any, ...], dict[int, Row]] = defaultdict(dict)
    for r in rows:
        k = _join_key(r)
        if r["metric"] == "latency_median_ms" and r["value"] and r["batch"] is not None and (
                k in acc or k[:3] in by_variant):
            acc.setdefault(k, by_variant[k[:3]])  # the variant's accuracy (torch simulation) for its deployment
            lat[k][r["batch"]] = r
    if len(lat) < 2:
        return None
    cover: dict[int, int] = defaultdict(int)
    for v in lat.values():
        for b in v:
            cover[b] += 1
    batch = min(cover, key=lambda b: (-cover[b], b))  # the batch measured for most variants, smallest on ties
    keys = _distinct([k for k in lat if batch in lat[k]], lambda k: (lat[k][batch]["value"], acc[k]["value"]))
    if len(keys) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    front = _pareto_axes(ax, [lat[k][batch]["value"] for k in keys], [acc[k]["value"] for k in keys],
                         _point_labels(keys), [_ci(acc[k]) for k in keys])
    ax.set(xlabel=f"median latency of one batch of {batch} (ms)", ylabel="top-1 (%)",
           title=f"accuracy vs latency, batch {batch} (Pareto front)")
    threads = sorted({str(lat[k][batch]["extra"].get("threads", "?")) for k in keys})
    engines = sorted({k[3] for k in keys})
    n = acc[keys[0]]["extra"].get("n_images", "?")
    names = ", ".join(_point_labels([keys[i] for i in front]))
    return Figure("accuracy_vs_latency", _png(fig),
                  f"Top-1 (%, 95% CI) on the same {n} test images against the median wall-clock latency (ms) of one "
                  f"batch of {batch} image(s) on engine(s) {', '.join(engines)}, {'/'.join(threads)} thread(s), "
                  "after warm-up, on this machine's CPU. Only variants whose accuracy and latency were both "
                  "measured in the same run are shown; accuracy is the variant's own evaluation (quantized "
                  "variants in PyTorch simulation of the scales the engine deploys). The red step line joins the "
                  "non-dominated variants "
                  f"(no other is both faster and at least as accurate): {names}. Up and to the left is better.")


def accuracy_vs_loss(rows: Sequence[Row]) -> Figure | None:
    """Top-1 against cross-entropy: per epoch of training (trajectory) and per evaluated variant."""
    hist = histories(rows)
    traj = {label: m for label, m in hist.items()
            if ("val_loss" in m and "val_top1" in m) or ("train_loss" in m and "train_top1" in m)}
    acc = {_join_key(r): r for r in rows if r["metric"] == "top1" and r["value"] is not None}
    loss = {_join_key(r): r["value"] for r in rows if r["metric"] == "loss" and r["value"] is not None}
    keys = [k for k in acc if k in loss]
    if not traj and len(keys) < 2:
        return None
    panels = (1 if traj else 0) + (1 if len(keys) >= 2 else 0)
    plt = _plt()
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels + (2.2 if len(keys) >= 2 else 0), 4.2), squeeze=False)
    axes = list(axes[0])
    parts = []
    if traj:
        ax = axes.pop(0)
        for label, m in traj.items():
            for split, style in (("train", "-"), ("val", "--")):
                if f"{split}_loss" in m and f"{split}_top1" in m:
                    lo, ac = dict(m[f"{split}_loss"]), dict(m[f"{split}_top1"])
                    ep = sorted(set(lo) & set(ac))
                    line = ax.plot([lo[e] for e in ep], [ac[e] for e in ep], style, marker="o", ms=3,
                                   label=f"{label} {split}")[0]
                    for e in (ep[0], ep[-1]):
                        ax.annotate(f"ep {e}", (lo[e], ac[e]), textcoords="offset points", xytext=(4, -10),
                                    fontsize=6, color=line.get_color())
        ax.set(xscale="log", xlabel="cross-entropy (nats)", ylabel="top-1 (%)", title="per training epoch")
        _plain_log_ticks(ax)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        parts.append(f"{'left' if panels == 2 else 'here'}: one point per training epoch, training split (solid, measured during the epoch) and "
                     "validation split (dashed, after the epoch), first and last epochs labelled")
    if len(keys) >= 2:
        ax = axes.pop(0)
        labels = _point_labels(keys)
        for k in keys:
            ax.errorbar(loss[k], acc[k]["value"], yerr=[[_ci(acc[k])[0]], [_ci(acc[k])[1]]], marker="o", capsize=2,
                        elinewidth=0.8)
        ax.set_xscale("log")
        _annotate(ax, [loss[k] for k in keys], [acc[k]["value"] for k in keys], labels)
        ax.set(xlabel="cross-entropy on the test images (nats)", ylabel="top-1 (%, 95% CI)",
               title="per variant (FP32 and quantized)")
        _plain_log_ticks(ax)
        ax.grid(alpha=0.3, which="both")
        n = acc[keys[0]]["extra"].get("n_images", "?")
        parts.append(f"{'right' if panels == 2 else 'here'}: one point per variant, mean cross-entropy and top-1 on the same "
                     f"{n} test images")
    return Figure("accuracy_vs_loss", _png(fig),
                  "Accuracy vs loss: top-1 (%) against mean cross-entropy (nats, log scale); " + "; ".join(parts)
                  + ". A variant that loses little top-1 but much loss is less confident, not less accurate.")


def parameters(rows: Sequence[Row]) -> Figure | None:
    """Parameter count per model, and bits stored per parameter for every saved variant."""
    params = {r["model"]: r["value"] for r in rows if r["metric"] == "params" and r["value"]}
    size = {variant_key(r): r["value"] for r in rows if r["metric"] == "size_bytes" and r["value"]}
    bits = {k: 8 * v / params[k[0]] for k, v in size.items() if k[0] in params}
    if not params:
        return None
    panels = (1 if len(params) >= 2 else 0) + (1 if bits else 0)
    if panels == 0:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, panels, figsize=(max(5.0, 1.0 * len(bits) + 3) * panels * 0.8, 3.8), squeeze=False)
    axes = list(axes[0])
    parts = []
    if len(params) >= 2:
        ax = axes.pop(0)
        names = sorted(params, key=params.get)
        ax.bar(range(len(names)), [params[m] for m in names], color="#8172B2")
        for i, m in enumerate(names):
            ax.text(i, params[m], human_count(params[m]), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set(yscale="log", ylabel="parameters (count)", title="parameters per model")
        ax.grid(axis="y", alpha=0.3)
        parts.append("parameters (weights and biases, each tensor counted once) per model")
    if bits:
        ax = axes.pop(0)
        ks = list(bits)
        several = len({k[0] for k in ks}) > 1
        ax.bar(range(len(ks)), [bits[k] for k in ks], color="#64B5CD")
        for i, k in enumerate(ks):
            ax.text(i, bits[k], f"{bits[k]:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(ks)), [(f"{k[0]} " if several else "") + _label(k) for k in ks], rotation=20,
                      ha="right", fontsize=8)
        one = "" if len(params) > 1 else f" ({next(iter(params))}: {human_count(next(iter(params.values())))} parameters)"
        ax.set(ylabel="bits on disk per parameter", title="storage per parameter" + one)
        for ref in (32, 8, 4):
            ax.axhline(ref, color="#999", lw=0.8, ls=":")
        ax.grid(axis="y", alpha=0.3)
        counts = ", ".join(f"{m}: {human_count(v)}" for m, v in sorted(params.items()))
        parts.append(f"bits on disk per parameter (8 x file bytes / parameter count; {counts} parameters), "
                     "dotted lines at 32, 8 and 4 bits; the excess is scales, zero-points, FP32 biases and file "
                     "headers")
    return Figure("parameters", _png(fig), "Parameters: " + "; ".join(parts) + ".")


def sensitivity(rows: Sequence[Row]) -> Figure | None:
    """Per-layer SQNR (dB) and top-1 with only that layer quantized, per quantized variant."""
    per: dict[tuple[str, str, str], dict[str, dict[int, tuple[str, float | None]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["metric"] in ("layer_sqnr_db", "layer_only_top1"):
            per[variant_key(r)][r["metric"]][r["extra"]["index"]] = (r["extra"]["layer"], r["value"])
    if not per:
        return None
    plt = _plt()
    fig, (ax_s, ax_a) = plt.subplots(2, 1, figsize=(max(6, 0.35 * max(len(v["layer_sqnr_db"]) for v in per.values())
                                                        + 3), 6), sharex=True)
    width = 0.8 / len(per)
    names: list[str] = []
    for j, (key, m) in enumerate(per.items()):
        idx = sorted(m["layer_sqnr_db"])
        names = [m["layer_sqnr_db"][i][0] for i in idx]
        ax_s.bar([i + j * width for i in range(len(idx))], [m["layer_sqnr_db"][i][1] or 0 for i in idx], width,
                 label=_label(key))
        ax_a.plot(range(len(idx)), [m["layer_only_top1"].get(i, ("", None))[1] for i in idx], marker="o",
                  label=_label(key))
    ax_s.set(ylabel="SQNR of layer output (dB)", title="per-layer sensitivity (only that layer quantized)")
    ax_a.set(ylabel="model top-1 (%)")
    ax_a.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    for ax in (ax_s, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return Figure("sensitivity", _png(fig),
                  "Per-layer sensitivity: for each conv/linear layer with only its weights and input quantized, "
                  "the signal-to-quantization-noise ratio of its output (dB, higher is better) and the whole "
                  "model's top-1 (%).")


def speedup_matrix(rows: Sequence[Row]) -> Figure | None:
    """Heat map of the speed-up over PyTorch eager FP32.

    One model: a row per engine/variant, a column per batch size. Several models (a study):
    a row per model and batch size, a column per engine/variant, so models compare at a glance.
    """
    from quantbench.report.tables import bench_records

    cells = bench_records(rows)
    if not cells:
        return None
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    models = sorted({c["model"] for c in cells})
    combos = sorted({(c["engine"], c["variant"]) for c in cells})
    batches = sorted({c["batch"] for c in cells})
    if len(models) == 1:
        rows_k = [(m, e, v) for m in models for e, v in combos]
        cols_k = batches
        def at(r: Any, col: Any) -> Any:
            return next((x for x in cells if (x["model"], x["engine"], x["variant"]) == r and x["batch"] == col),
                        None)
        row_labels = [f"{e} {v}" for _, e, v in rows_k]
        col_labels = [str(b) for b in cols_k]
        xlabel = "batch size"
    else:
        rows_k = [(m, b) for m in models for b in batches]
        cols_k = combos

        def at(r: Any, col: Any) -> Any:
            return next((x for x in cells if (x["model"], x["batch"]) == r and (x["engine"], x["variant"]) == col),
                        None)
        row_labels = [f"{m} b{b}" for m, b in rows_k]
        col_labels = [f"{e}\n{v}" for e, v in cols_k]
        xlabel = "engine / variant"
    grid = np.full((len(rows_k), len(cols_k)), np.nan)
    for i, r in enumerate(rows_k):
        for j, col in enumerate(cols_k):
            c = at(r, col)
            if c is not None and c["speedup_vs_torch_fp32"] is not None:
                grid[i, j] = c["speedup_vs_torch_fp32"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.6 + 1.1 * len(cols_k), 1.4 + 0.32 * len(rows_k)))
    finite = grid[np.isfinite(grid)]
    lo = float(min(finite.min(), 0.9)) if finite.size else 0.5
    hi = float(max(finite.max(), 1.1)) if finite.size else 2.0
    im = ax.imshow(np.log2(grid), cmap="RdYlGn", aspect="auto",
                   norm=TwoSlopeNorm(vmin=np.log2(lo), vcenter=0.0, vmax=np.log2(hi)))
    for i in range(len(rows_k)):
        for j in range(len(cols_k)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}x", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols_k)), col_labels, fontsize=7 if len(models) > 1 else 9)
    ax.set_yticks(range(len(rows_k)), row_labels, fontsize=7)
    ax.set(xlabel=xlabel, title="speed-up vs PyTorch eager FP32")
    fig.colorbar(im, ax=ax, label="log2 speed-up")
    return Figure("speedup_matrix", _png(fig),
                  "Speed-up of every engine and variant over PyTorch eager FP32 on the same model and batch size "
                  "(median latency ratio, measured in the same run; > 1 = faster). Red cells are slower than "
                  "PyTorch FP32; empty cells were not measured (see the skipped list).")


def _split_cells(rows: Sequence[Row], metric: str) -> list[Row]:
    return [r for r in rows if r["metric"] == metric and r["value"] is not None]


def split_accuracy(rows: Sequence[Row]) -> Figure | None:
    """Top-1 against the split point, one line per qbins x companding x noise."""
    pts = _split_cells(rows, "split.top1")
    if not pts:
        return None
    lines: dict[tuple[Any, ...], list[tuple[int, float]]] = defaultdict(list)
    for r in pts:
        e = r["extra"]
        lines[(e["qbins"], e["companding"], e["noise"])].append((e["split"], r["value"]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (q, comp, noise), p in sorted(lines.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        p.sort()
        ax.plot([a for a, _ in p], [b for _, b in p], marker="o" if noise == "none" else "s",
                linestyle="-" if comp == "none" else "--",
                label=f"q{q} {'uniform' if comp == 'none' else 'mu-law'}" + ("" if noise == "none" else f" {noise}"))
    n = pts[0]["extra"].get("n_images", "?")
    ax.set(xlabel="split after block", ylabel="top-1 (%)", title="accuracy vs split point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return Figure("split_accuracy", _png(fig),
                  f"Top-1 (%) on {n} evaluation images when the features at the split are quantized to qbins levels "
                  "(solid: uniform, dashed: mu-law companded; squares: fine-tuned with or without quantization noise).")


def split_bpp(rows: Sequence[Row]) -> Figure | None:
    """Bits per pixel against qbins, per split and companding (real coded bytes, side info included)."""
    pts = _split_cells(rows, "split.bpp")
    if not pts:
        return None
    lines: dict[tuple[Any, ...], list[tuple[int, float]]] = defaultdict(list)
    for r in pts:
        e = r["extra"]
        if e.get("noise", "none") != "none":
            continue
        lines[(e["split"], e["companding"])].append((e["qbins"], r["value"]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (s, comp), p in sorted(lines.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        p.sort()
        ax.plot([a for a, _ in p], [b for _, b in p], marker="o", linestyle="-" if comp == "none" else "--",
                label=f"split {s} {'uniform' if comp == 'none' else 'mu-law'}")
    ax.set(xlabel="qbins", ylabel="bits per input pixel", title="coded size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    codec = pts[0]["extra"].get("codec", "?")
    return Figure("split_bpp", _png(fig),
                  f"Coded feature size in bits per input pixel (total coded bits incl. side information / (N x H x W) "
                  f"of the input images), codec {codec}; 24 bpp = the uncompressed RGB input.")


def _comp_name(comp: str) -> str:
    return "uniform" if comp == "none" else ("mu-law" if comp == "mulaw" else comp)


def split_regimes(rows: Sequence[Row]) -> Figure | None:
    """Top-1 per split cell for each training regime: none, fine-tuned without noise, with noise (at a block)."""
    pts = _split_cells(rows, "split.top1")
    cells: dict[tuple[Any, ...], dict[str, float]] = defaultdict(dict)
    for r in pts:
        e = r["extra"]
        cells[(e["split"], e["qbins"], e["companding"])][str(e["noise"])] = r["value"]
    cells = {k: v for k, v in cells.items() if len(v) > 1}  # only cells with a fine-tuned model beside the original
    if not cells:
        return None
    regimes = sorted({n for v in cells.values() for n in v},
                     key=lambda n: (n != "none", n != "no-noise", n))
    names = {"none": "not fine-tuned", "no-noise": "fine-tuned, no noise", "noise": "fine-tuned with noise"}
    keys = sorted(cells, key=lambda k: tuple(str(x) for x in k))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(keys) * len(regimes) / 2 + 3), 4))
    width = 0.8 / len(regimes)
    for j, reg in enumerate(regimes):
        xs = [i + (j - (len(regimes) - 1) / 2) * width for i, k in enumerate(keys) if reg in cells[k]]
        vs = [cells[k][reg] for k in keys if reg in cells[k]]
        ax.bar(xs, vs, width, label=names.get(reg, f"fine-tuned with noise at block {reg.split('@')[-1]}"))
        for x, v in zip(xs, vs, strict=True):
            ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(keys)), [f"split {s}\nq{q} {_comp_name(c)}" for s, q, c in keys], fontsize=8)
    ax.set(ylabel="top-1 (%)", ylim=(0, 105), title="training regimes: noise vs no noise")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    n = pts[0]["extra"].get("n_images", "?")
    return Figure("split_regimes", _png(fig),
                  f"Top-1 (%) on {n} test images with the features at the split quantized to q levels, for each "
                  "training regime: the original model, the same fine-tuning without noise, and fine-tuning with "
                  "additive U(-step/2, step/2) quantization noise at the split (or at the block named), with step "
                  "the real quantization step of those qbins and range. Same images, same quantizer at test time.")


def split_rate_accuracy(rows: Sequence[Row]) -> Figure | None:
    """Top-1 against coded bits per pixel, one line per split and companding (uniform vs mu-law)."""
    acc = {(r["extra"]["split"], r["extra"]["qbins"], r["extra"]["companding"]): r["value"]
           for r in _split_cells(rows, "split.top1") if r["extra"].get("noise", "none") == "none"}
    bpp = {(r["extra"]["split"], r["extra"]["qbins"], r["extra"]["companding"]): r["value"]
           for r in _split_cells(rows, "split.bpp") if r["extra"].get("noise", "none") == "none"}
    keys = [k for k in acc if k in bpp]
    if len(keys) < 2:
        return None
    lines: dict[tuple[Any, str], list[tuple[float, float, int]]] = defaultdict(list)
    for s, q, c in keys:
        lines[(s, c)].append((bpp[(s, q, c)], acc[(s, q, c)], q))
    comps = sorted({c for _, c in lines})
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors: dict[Any, str] = {}
    for (s, c), p in sorted(lines.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        p.sort()
        kw = {"color": colors[s]} if s in colors else {}
        line = ax.plot([a for a, _, _ in p], [b for _, b, _ in p], marker="o" if c == "none" else "s",
                       linestyle="-" if c == "none" else "--", label=f"split {s} {_comp_name(c)}", **kw)[0]
        colors.setdefault(s, line.get_color())
        for a, b, q in p:
            ax.annotate(f"q{q}", (a, b), textcoords="offset points", xytext=(3, -9), fontsize=6, color=line.get_color())
    ax.set(xscale="log", xlabel="coded bits per input pixel (side information included)", ylabel="top-1 (%)",
           title="rate vs accuracy: " + " vs ".join(_comp_name(c) for c in comps))
    _plain_log_ticks(ax)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    r0 = _split_cells(rows, "split.top1")[0]["extra"]
    return Figure("split_rate_accuracy", _png(fig),
                  f"Top-1 (%) on {r0.get('n_images', '?')} test images against the coded feature size in bits per "
                  f"input pixel (real {r0.get('codec', '?')} bytes plus side information, / (N x H x W)), one point "
                  "per qbins (labelled), solid = uniform quantizer, dashed = mu-law companded, same colour = same "
                  "split. Up and to the left is better; a companded line above the uniform one at equal bpp means "
                  "companding helps there.")


def split_latency(rows: Sequence[Row]) -> Figure | None:
    """Estimated end-to-end latency against bandwidth per split (edge + transfer + cloud)."""
    pts = [r for r in _split_cells(rows, "split.latency_s") if r["extra"].get("noise", "none") == "none"]
    if not pts:
        return None
    best: dict[tuple[int, float], float] = {}
    for r in pts:
        e = r["extra"]
        k = (e["split"], e["bandwidth_mbps"])
        best[k] = min(best.get(k, float("inf")), r["value"])  # the smallest coded variant of that split
    lines: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for (s, bw), v in best.items():
        lines[s].append((bw, v))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, p in sorted(lines.items()):
        p.sort()
        ax.plot([a for a, _ in p], [1000 * b for _, b in p], marker="o", label=f"split {s}")
    e = pts[0]["extra"]
    ax.set(xscale="log", yscale="log", xlabel="bandwidth (Mbit/s)", ylabel="estimated latency (ms)",
           title=f"edge {e.get('edge')} + link + cloud {e.get('cloud')}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return Figure("split_latency", _png(fig),
                  "Estimated latency of one image: edge MACs x 2 / edge GFLOPS + coded bits / bandwidth + cloud MACs "
                  "x 2 / cloud GFLOPS (FLOPs = 2 x MACs; device profiles), for the smallest coded variant of each "
                  "split. The lowest line at a bandwidth is the best split there.")


def device_latency(rows: Sequence[Row]) -> Figure | None:
    """Imported devices: measured latency vs batch per engine and scheme, the profile estimate dashed; speed-ups.

    One row of panels per device. Left: median latency per batch for every engine/scheme measured
    there, with the device profile's estimate (MACs x batch / GMAC/s, one per scheme; same MACs for
    every engine) as a dashed line, so the estimate's error is read off the gap. Right: the speed-up
    of each quantized scheme over the same engine's FP32 on that device, per batch size.
    """
    meas: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    est: dict[str, dict[int, set[float]]] = defaultdict(lambda: defaultdict(set))  # device -> batch -> estimates
    rates: dict[str, set[str]] = defaultdict(set)
    speed: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        dev = r["extra"].get("device") if isinstance(r.get("extra"), dict) else None
        if dev is None or r["batch"] is None:
            continue
        engine = str(r["engine"]).rsplit("@", 1)[0]
        if r["metric"] == "latency_median_ms":
            meas[(dev, engine, r["method"])].append((r["batch"], r["value"]))
        elif r["metric"] == "estimated_latency_ms":  # schemes with equal MACs share one estimate line
            est[dev][r["batch"]].add(round(r["value"], 9))
            rate = r["extra"].get("profile_gmacs")
            rates[dev].add(f"{rate:g} GMAC/s" if isinstance(rate, (int, float)) else "device profile")
        elif r["metric"] == "device_speedup_vs_fp32" and r["method"] != "fp32":
            speed[(dev, engine, r["method"])].append((r["batch"], r["value"]))
    if not meas:
        return None
    devices = sorted({k[0] for k in meas})
    series = sorted({k[1:] for k in meas})
    plt = _plt()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {k: colors[i % len(colors)] for i, k in enumerate(series)}
    fig, axes = plt.subplots(len(devices), 2, figsize=(11, 3.6 * len(devices)), squeeze=False)
    for (ax_l, ax_s), dev in zip(axes, devices, strict=True):
        batches: list[int] = []
        for (d, engine, scheme), pts in sorted(meas.items()):
            if d != dev:
                continue
            b, m = zip(*sorted(pts), strict=True)
            batches += b
            ax_l.plot(b, m, marker="o", color=color[(engine, scheme)], label=f"{scheme} / {engine}")
        by_batch = est.get(dev, {})
        for k in range(max((len(v) for v in by_batch.values()), default=0)):  # one line per distinct MAC count
            pts = sorted((b, sorted(vs)[k]) for b, vs in by_batch.items() if len(vs) > k)
            ax_l.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", color="0.3", lw=1.2,
                      label=f"estimate at {', '.join(sorted(rates[dev]))}" if k == 0 else None)
        ax_l.set(yscale="log", xlabel="batch size", ylabel="latency per batch (ms)", title=f"{dev}: measured latency")
        for (d, engine, scheme), pts in sorted(speed.items()):
            if d == dev:
                b, v = zip(*sorted(pts), strict=True)
                ax_s.plot(b, v, marker="s", color=color[(engine, scheme)], label=f"{scheme} / {engine}")
        ax_s.axhline(1.0, color="0.5", lw=0.8)
        ax_s.set(xlabel="batch size", ylabel="x the same engine's FP32", title=f"{dev}: speed-up over FP32")
        for ax in (ax_l, ax_s):
            _batch_axis(ax, batches)
            ax.grid(alpha=0.3, which="both")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    caption = ("Per imported device: median latency against batch size for every engine and scheme the device "
               "runner measured (solid)")
    caption += (", and the device profile's estimate, MACs x batch / rate in GMAC/s (dashed; the gap is the "
                "estimate's error)" if est else "; no device profile rate was given, so no estimate is drawn")
    caption += ". Right: speed-up of each quantized scheme over the same engine's FP32 on that device (> 1 = faster)."
    return Figure("device_latency", _png(fig), caption)


ALL_FIGURES = (training_curves, accuracy_vs_loss, accuracy_bars, size_bars, parameters, accuracy_vs_size,
               accuracy_vs_latency, sensitivity, latency_vs_batch, macs_vs_batch, speedup_matrix, split_accuracy,
               split_regimes, split_rate_accuracy, split_bpp, split_latency, device_latency)


def make_figures(rows: Sequence[Row]) -> list[Figure]:
    """Every figure this run's rows support (none when matplotlib is absent)."""
    if not matplotlib_available():
        return []
    return [f for f in (fn(rows) for fn in ALL_FIGURES) if f is not None]
