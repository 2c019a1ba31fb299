"""Split-computing figures: accuracy per split point (one per model and training regime), the training-regime
comparison (noise at block 1 vs block 2, evaluated at every split), coded rate, rate vs accuracy, estimated
end-to-end latency. Split axes carry one integer tick per evaluated split, labelled with its block.
"""

from __future__ import annotations

import re
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


def _slug(text: Any) -> str:
    """A figure-file-safe name part: ``resnet20 [hyper.w=2]`` -> ``resnet20_hyper.w_2``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("_") or "x"


def _block_ticks(ax: Any, blocks: dict[int, str]) -> None:
    """x ticks at the evaluated split points only, labelled with the block (no 1.25 / 1.5 in between)."""
    ax.set_xticks(sorted(blocks), [f"{s}\n{blocks[s]}" if blocks[s] else str(s) for s in sorted(blocks)], fontsize=8)
    if len(blocks) == 1:
        (only,) = blocks
        ax.set_xlim(only - 1, only + 1)


def _regime_name(regime: str) -> str:
    """Plain words for a regime label (``noise@2`` -> ``fine-tuned with noise at block 2``)."""
    kind, _, at = str(regime).partition("@")
    words = {"none": "not fine-tuned", "no-noise": "fine-tuned, no noise", "noise": "fine-tuned with noise"}
    return words.get(kind, kind) + (f" at block {at}" if at else "")


def split_accuracy(rows: Sequence[Row]) -> list[Figure]:
    """Top-1 against the split point: one figure per model and training regime, one line per qbins x companding.

    A published split-computing study draws accuracy vs split once per model and training regime; so
    do we (names ``split_accuracy`` when there is one, else ``split_accuracy_MODEL_REGIME``). The x axis
    has one tick per evaluated split, labelled with its block.
    """
    pts = _split_cells(rows, "split.top1")
    if len({r["extra"]["split"] for r in pts}) < 2:
        return []  # one split point: no line to draw (the table and the rate/accuracy figure show it)
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in pts:
        groups[(str(r.get("model", "")), str(r["extra"]["noise"]))].append(r)
    groups = {k: v for k, v in groups.items() if len({r["extra"]["split"] for r in v}) >= 2}
    plt = _plt()
    out = []
    for (model, regime), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "none", kv[0][1])):
        lines: dict[tuple[Any, ...], list[tuple[int, float, tuple[float, float]]]] = defaultdict(list)
        blocks: dict[int, str] = {}
        for r in group:
            e = r["extra"]
            blocks[int(e["split"])] = str(e.get("block") or "")
            lines[(e["qbins"], e["companding"])].append((e["split"], r["value"],
                                                         wilson_ci(r["value"], e.get("n_images"))))
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for (q, comp), p in sorted(lines.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            p.sort()
            ax.errorbar([a for a, _, _ in p], [b for _, b, _ in p], yerr=[[b - c[0] for _, b, c in p],
                                                                          [c[1] - b for _, b, c in p]],
                        marker="o", capsize=2, elinewidth=0.7, linestyle="-" if comp == "none" else "--",
                        label=f"q{q} {_comp_name(comp)}")
        zoom_percent(ax, [c[0] for p in lines.values() for _, _, c in p],
                     [c[1] for p in lines.values() for _, _, c in p])
        _block_ticks(ax, blocks)
        n = group[0]["extra"].get("n_images", "?")
        title = f"{model}: accuracy vs split ({_regime_name(regime)})" if model else \
            f"accuracy vs split ({_regime_name(regime)})"
        ax.set(xlabel="split after block", ylabel="top-1 (%, 95% CI)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        name = "split_accuracy" if len(groups) == 1 else f"split_accuracy_{_slug(model)}_{_slug(regime)}"
        out.append(Figure(name, _png(fig),
                          f"{model or 'The model'}, {_regime_name(regime)}: top-1 (%) on {n} evaluation images when "
                          "the features at the split are quantized to qbins levels (solid: uniform, dashed: mu-law "
                          "companded); error bars are 95% Wilson intervals, axis zoomed to the data."))
    return out


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
    """Top-1 against the evaluated split, one line per training regime, one panel per qbins x companding.

    The training-regime comparison of a split-computing study in one figure: the original model, the same
    fine-tuning without noise, and fine-tuning with noise at the split - or, with ``noise_at`` (1, 2), with
    noise at block 1 and at block 2, each model evaluated at every split.
    """
    pts = _split_cells(rows, "split.top1")
    cells: dict[tuple[Any, ...], dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    blocks: dict[int, str] = {}
    for r in pts:
        e = r["extra"]
        cells[(str(r.get("model", "")), e["qbins"], e["companding"])][str(e["noise"])][int(e["split"])] = r["value"]
        blocks[int(e["split"])] = str(e.get("block") or "")
    cells = {k: v for k, v in cells.items() if len(v) > 1}  # only cells with a fine-tuned model beside the original
    if not cells:
        return None
    keys = sorted(cells, key=lambda k: tuple(str(x) for x in k))
    n = pts[0]["extra"].get("n_images", "?")
    at = sorted({reg.partition("@")[2] for v in cells.values() for reg in v if "@" in reg}, key=str)
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(max(6.5, 4.2 * len(keys)), 4.2), squeeze=False)
    for ax, k in zip(axes[0], keys, strict=True):
        regimes = sorted(cells[k], key=lambda reg: (reg != "none", reg.partition("@")[0] != "no-noise", reg))
        lows, highs, used = [], [], {}
        for reg in regimes:
            pts_reg = sorted(cells[k][reg].items())
            xs, vs = [a for a, _ in pts_reg], [b for _, b in pts_reg]
            cis = [wilson_ci(v, n) for v in vs]
            lows += [c[0] for c in cis]
            highs += [c[1] for c in cis]
            used.update({x: blocks.get(x, "") for x in xs})
            ax.errorbar(xs, vs, yerr=[[v - c[0] for v, c in zip(vs, cis, strict=True)],
                                      [c[1] - v for v, c in zip(vs, cis, strict=True)]], marker="o", capsize=3,
                        linestyle=":" if reg == "none" else ("--" if reg.startswith("no-noise") else "-"),
                        label=_regime_name(reg))
        _block_ticks(ax, used)
        zoom_percent(ax, lows, highs)
        model, q, comp = k
        ax.set(xlabel="evaluated split (after block)", ylabel="top-1 (%, 95% CI)",
               title=f"{model + ': ' if model else ''}q{q} {_comp_name(comp)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("training regimes: " + (" vs ".join(f"noise at block {a}" for a in at) if at
                                         else "noise vs no noise"), fontsize=10)
    return Figure("split_regimes", _png(fig),
                  f"Top-1 (%) on {n} test images with the features at the evaluated split quantized to q levels, "
                  "for each training regime: the original model (dotted), the same fine-tuning without noise "
                  "(dashed), and fine-tuning with additive U(-step/2, step/2) quantization noise at the split or at "
                  "the block named (solid), with step the real quantization step of those qbins and range; a model "
                  "fine-tuned at one block is evaluated at every split. Same images, same quantizer at test time; "
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
