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

from quantbench.report.tables import histories, variant_key

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
            ax_l.errorbar(b, m, yerr=[[0] * len(m), [q - x for q, x in zip(p90, m, strict=True)]], marker="o",
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


def accuracy_vs_size(rows: Sequence[Row]) -> Figure | None:
    """Top-1 against bytes on disk per variant: the accuracy/size trade-off (Pareto view)."""
    acc = {variant_key(r): r for r in rows if r["metric"] == "top1" and r["value"] is not None}
    size = {variant_key(r): r["value"] for r in rows if r["metric"] == "size_bytes" and r["value"]}
    keys = [k for k in acc if k in size]
    if len(keys) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys:
        r = acc[k]
        e = r["extra"]
        ax.errorbar(size[k] / 1e3, r["value"], yerr=[[r["value"] - e.get("ci_low", r["value"])],
                                                    [e.get("ci_high", r["value"]) - r["value"]]],
                    marker="o", capsize=3, label=_label(k))
    ax.set(xscale="log", xlabel="size on disk (kB, 1 kB = 1000 B)", ylabel="top-1 (%)", title="accuracy vs size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return Figure("accuracy_vs_size", _png(fig),
                  "Top-1 (%, 95% CI) on the same evaluation images against the bytes of each saved model file "
                  "(packed integers for quantized models). Up and to the left is better.")


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


ALL_FIGURES = (training_curves, accuracy_bars, size_bars, accuracy_vs_size, sensitivity, latency_vs_batch,
               macs_vs_batch, speedup_matrix, split_accuracy, split_bpp, split_latency)


def make_figures(rows: Sequence[Row]) -> list[Figure]:
    """Every figure this run's rows support (none when matplotlib is absent)."""
    if not matplotlib_available():
        return []
    return [f for f in (fn(rows) for fn in ALL_FIGURES) if f is not None]
