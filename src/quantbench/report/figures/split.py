"""Split-computing figures: accuracy per split point and training regime, coded rate, rate vs accuracy,
estimated end-to-end latency.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from quantbench.report.figures.common import (
    Figure,
    Row,
    _plain_log_ticks,
    _plt,
    _png,
    wilson_ci,
    zoom_percent,
)


def _split_cells(rows: Sequence[Row], metric: str) -> list[Row]:
    return [r for r in rows if r["metric"] == metric and r["value"] is not None]


def split_accuracy(rows: Sequence[Row]) -> Figure | None:
    """Top-1 against the split point, one line per qbins x companding x noise."""
    pts = _split_cells(rows, "split.top1")
    if not pts:
        return None
    if len({r["extra"]["split"] for r in pts}) < 2:
        return None  # one split point: no line to draw (the table and the rate/accuracy figure show it)
    lines: dict[tuple[Any, ...], list[tuple[int, float, tuple[float, float]]]] = defaultdict(list)
    for r in pts:
        e = r["extra"]
        lines[(e["qbins"], e["companding"], e["noise"])].append((e["split"], r["value"],
                                                                 wilson_ci(r["value"], e.get("n_images"))))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (q, comp, noise), p in sorted(lines.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        p.sort()
        ax.errorbar([a for a, _, _ in p], [b for _, b, _ in p], yerr=[[b - c[0] for _, b, c in p],
                                                                      [c[1] - b for _, b, c in p]],
                    marker="o" if noise == "none" else "s", capsize=2, elinewidth=0.7,
                    linestyle="-" if comp == "none" else "--",
                    label=f"q{q} {_comp_name(comp)}" + ("" if noise == "none" else f" {noise}"))
    zoom_percent(ax, [c[0] for p in lines.values() for _, _, c in p], [c[1] for p in lines.values() for _, _, c in p])
    n = pts[0]["extra"].get("n_images", "?")
    ax.set(xlabel="split after block", ylabel="top-1 (%, 95% CI)", title="accuracy vs split point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return Figure("split_accuracy", _png(fig),
                  f"Top-1 (%) on {n} evaluation images when the features at the split are quantized to qbins levels "
                  "(solid: uniform, dashed: mu-law companded; squares: fine-tuned with or without quantization noise); "
                  "error bars are 95% Wilson intervals, axis zoomed to the data.")


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
    if max((len(p) for p in lines.values()), default=0) < 2:
        return None  # one qbins per line: the table says it
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
    n = pts[0]["extra"].get("n_images", "?")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(keys) * len(regimes) / 2 + 3), 4))
    width = 0.8 / len(regimes)
    lows, highs = [], []
    for j, reg in enumerate(regimes):
        xs = [i + (j - (len(regimes) - 1) / 2) * width for i, k in enumerate(keys) if reg in cells[k]]
        vs = [cells[k][reg] for k in keys if reg in cells[k]]
        cis = [wilson_ci(v, n) for v in vs]
        lows += [c[0] for c in cis]
        highs += [c[1] for c in cis]
        ax.errorbar(xs, vs, yerr=[[v - c[0] for v, c in zip(vs, cis, strict=True)],
                                  [c[1] - v for v, c in zip(vs, cis, strict=True)]], fmt="o", capsize=3,
                    label=names.get(reg, f"fine-tuned with noise at block {reg.split('@')[-1]}"))
    ax.set_xticks(range(len(keys)), [f"split {s}\nq{q} {_comp_name(c)}" for s, q, c in keys], fontsize=8)
    zoom_percent(ax, lows, highs)
    ax.set(ylabel="top-1 (%, 95% CI)", title="training regimes: noise vs no noise")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return Figure("split_regimes", _png(fig),
                  f"Top-1 (%) on {n} test images with the features at the split quantized to q levels, for each "
                  "training regime: the original model, the same fine-tuning without noise, and fine-tuning with "
                  "additive U(-step/2, step/2) quantization noise at the split (or at the block named), with step "
                  "the real quantization step of those qbins and range. Same images, same quantizer at test time; "
                  "error bars are 95% Wilson intervals, axis zoomed to the data.")


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
           title=f"edge {_device(e, 'edge')} + link + cloud {_device(e, 'cloud')}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return Figure("split_latency", _png(fig),
                  "Estimated latency of one image: edge MACs x 2 / edge GFLOPS + coded bits / bandwidth + cloud MACs "
                  "x 2 / cloud GFLOPS (FLOPs = 2 x MACs; device profiles: 'published' = a study's figure, "
                  "'measured' = the GEMM ceiling run_bundle.py measured on the device), for the smallest coded variant "
                  "of each split. The lowest line at a bandwidth is the best split there.")


def _device(extra: dict, side: str) -> str:
    """``raspberry-pi-4b (measured)``: the device and where its rate comes from (older rows: the name only)."""
    source, rate = extra.get(f"{side}_source"), extra.get(f"{side}_gflops")
    if not source:
        return str(extra.get(side))
    return f"{extra.get(side)} ({source}" + (f", {rate:.3g} GFLOPS)" if isinstance(rate, (int, float)) else ")")
