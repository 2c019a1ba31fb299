"""Accuracy figures: training curves, drop vs FP32, accuracy against size, latency and loss, parameters,
per-layer sensitivity.

Accuracy axes are zoomed to the data, with confidence intervals as error bars; a figure is drawn
only when it shows something a one-line table cell does not (two or more points).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from quantbench.report.figures.common import (
    Figure,
    Row,
    _annotate,
    _ci,
    _distinct,
    _join_key,
    _label,
    _pareto_axes,
    _plain_log_ticks,
    _plt,
    _png,
    _point_labels,
    zoom_percent,
)
from quantbench.report.tables import histories, human_count, variant_key


def training_curves(rows: Sequence[Row]) -> Figure | None:
    """Loss and top-1 per epoch (train and validation) for every trained variant."""
    hist = {k: m for k, m in histories(rows).items() if max(len(v) for v in m.values()) >= 2}
    if not hist:
        return None  # one epoch is one point: the training table says it
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


def accuracy_drop(rows: Sequence[Row]) -> Figure | None:
    """Top-1 lost versus FP32 per quantized variant with its PAIRED 95% CI; without drop rows, top-1 with
    Wilson CIs when no accuracy-vs-size chart shows the same points.

    Why: the paired interval (same images) is several times narrower than the two accuracies' own
    intervals, so it is the figure that says whether a drop is real; the axis is zoomed to the data.
    """
    unique: dict[tuple[Any, ...], Row] = {}  # sweep cells sharing a variant would repeat it
    for r in rows:
        if r["metric"] == "top1_drop" and r["value"] is not None:
            unique.setdefault((*variant_key(r), r["value"]), r)
    drops = list(unique.values())
    plt = _plt()
    if drops:
        fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.42 * len(drops)))
        ys = list(range(len(drops)))[::-1]
        lo = [r["value"] - r["extra"].get("ci_low", r["value"]) for r in drops]
        hi = [r["extra"].get("ci_high", r["value"]) - r["value"] for r in drops]
        ax.errorbar([r["value"] for r in drops], ys, xerr=[lo, hi], fmt="o", capsize=3, color="#C44E52")
        ax.axvline(0.0, color="0.4", lw=0.8, ls="--")
        several = len({r["model"] for r in drops}) > 1
        ax.set_yticks(ys, [(f"{r['model']} " if several else "") + _label(variant_key(r)) for r in drops], fontsize=8)
        ax.set(xlabel="top-1 points lost vs FP32 (paired 95% CI; > 0 = worse)", title="accuracy drop vs FP32")
        ax.grid(axis="x", alpha=0.3)
        n = drops[0]["extra"].get("n_images", "?")
        return Figure("accuracy_drop", _png(fig),
                      f"Top-1 points lost by each quantized variant against the FP32 model on the same {n} images "
                      "(FP32 minus quantized; right of the dashed zero line = worse). Bars: paired 95% confidence "
                      "intervals (Newcombe), narrower than the two accuracies' own intervals because most images are "
                      "right or wrong for both.")
    pts = [r for r in rows if r["metric"] == "top1" and r["value"] is not None]
    sized = {_join_key(r) for r in rows if r["metric"] == "size_bytes" and r["value"]}
    if len(pts) < 2 or sum(_join_key(r) in sized for r in pts) >= 2:
        return None  # one point says nothing a table does not; with sizes, accuracy_vs_size shows them
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.42 * len(pts)))
    ys = list(range(len(pts)))[::-1]
    err = [_ci(r) for r in pts]
    ax.errorbar([r["value"] for r in pts], ys, xerr=[[e[0] for e in err], [e[1] for e in err]], fmt="o", capsize=3)
    ax.set_yticks(ys, [_label(variant_key(r)) for r in pts], fontsize=8)
    zoom_percent(ax, [r["value"] - e[0] for r, e in zip(pts, err, strict=True)],
                 [r["value"] + e[1] for r, e in zip(pts, err, strict=True)], axis="x")
    ax.set(xlabel="top-1 (%, 95% Wilson CI)", title="accuracy on the evaluation images")
    ax.grid(axis="x", alpha=0.3)
    n = pts[0]["extra"].get("n_images", "?")
    return Figure("accuracy", _png(fig),
                  f"Top-1 accuracy (%) on {n} evaluation images per variant, axis zoomed to the data; bars are 95% "
                  "Wilson confidence intervals.")


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
                         [_ci(acc[k]) for k in keys], xlabel="size on disk (kB, 1 kB = 1000 B)",
                         ylabel="top-1 (%, 95% CI)", title="accuracy vs size (Pareto front)")
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
                         _point_labels(keys), [_ci(acc[k]) for k in keys],
                         xlabel=f"median latency of one batch of {batch} (ms)", ylabel="top-1 (%, 95% CI)",
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
            if any(f"{sp}_loss" in m and f"{sp}_top1" in m and len(m[f"{sp}_loss"]) >= 2 for sp in ("val", "train"))}
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
        ax.set(xlabel="cross-entropy on the test images (nats)", ylabel="top-1 (%, 95% CI)",
               title="per variant (FP32 and quantized)")
        _plain_log_ticks(ax)
        ax.grid(alpha=0.3, which="both")
        _annotate(ax, [loss[k] for k in keys], [acc[k]["value"] for k in keys], labels)
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
    panels = (1 if len(params) >= 2 else 0) + (1 if len(bits) >= 2 else 0)  # one bar alone says nothing
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
    if len(bits) >= 2:
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

