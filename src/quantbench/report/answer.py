"""The answer a report opens with: one to three sentences in words, with the numbers.

Why: a person opening a report wants the verdict first (how much accuracy a scheme costs, how
much smaller or faster it is), not a table to decode. The sentences are computed from the same
store rows as the tables, so they never disagree with them. A run may write its own answer: a
row with metric ``answer`` (unit ``text``, value NULL, extra ``{"lines": [str, ...]}``) replaces
the generated one, line for line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from quantbench.machine_load import busy_shares, medians_differ
from quantbench.report.tables import bench_records, human_bytes, human_count, latency_ci

Row = dict[str, Any]

ANSWER_METRIC = "answer"
"""Metric of a row whose ``extra["lines"]`` is the answer a report opens with (the run's own words)."""


def answer_lines(run: dict[str, Any], rows: Sequence[Row]) -> list[str]:
    """The report's opening sentences: the run's own ``answer`` rows if any, else a generated summary.

    Example:
        >>> answer_lines({"kind": "eval"}, [{"metric": "answer", "extra": {"lines": ["It works."]}}])
        ['It works.']
        >>> answer_lines({"kind": "lint"}, [])[0][:34]
        'This lint run stored no measuremen'
    """
    own = [str(line) for r in rows if r["metric"] == ANSWER_METRIC for line in (r.get("extra") or {}).get("lines", [])]
    if own:
        return own
    for make in (_bench, _devices, _split, _accuracy):
        lines = make(rows)
        if lines:
            return lines[:3]
    return [f"This {run.get('kind', 'run')} run stored no measurements a summary can be made of "
            "(no accuracy, size, latency or split rows); see the tables below and the run folder."]


def _pct(x: float) -> str:
    return f"{x:.1f}%"


def _scheme(label: str) -> str:
    """``w8a8:mse`` -> ``W8A8 (w8a8:mse)``; ``fp32`` -> ``FP32``."""
    head = label.split(":")[0].upper()
    return head if head.lower() == label else f"{head} ({label})"


def _by_variant(rows: Sequence[Row]) -> dict[tuple[str, str, str], dict[str, Row]]:
    out: dict[tuple[str, str, str], dict[str, Row]] = defaultdict(dict)
    for r in rows:
        if r["batch"] in (None, 1) and r["metric"] in ("top1", "top1_drop", "size_bytes", "macs", "train_time_s"):
            out[(r["model"], r["method"], r["engine"])].setdefault(r["metric"], r)
    return out


def _accuracy(rows: Sequence[Row]) -> list[str]:
    """FP32 accuracy (with its CI, images and size), then the best and the worst quantized variant."""
    by = _by_variant(rows)
    tops = {k: m for k, m in by.items() if "top1" in m and m["top1"]["value"] is not None}
    if not tops:
        return []
    fp32 = next((k for k in tops if k[1] == "fp32" and k[2] == "torch"), None) or next(
        (k for k in tops if k[1] == "fp32"), None)
    out = []
    base = tops[fp32] if fp32 else None
    if base is not None:
        t = base["top1"]
        e = t["extra"]
        n = e.get("n_images")
        ci = f" [{e['ci_low']:.1f}, {e['ci_high']:.1f}]" if "ci_low" in e and "ci_high" in e else ""
        split = e.get("split")
        where = f"{n:,} {split + ' ' if split and split != 'all' else ''}images of {t['data']}" if n else t["data"]
        cost = []
        if "size_bytes" in base:
            cost.append(f"{human_bytes(base['size_bytes']['value'])} on disk")
        if "macs" in base:
            cost.append(f"{human_count(base['macs']['value'])}MACs per image")
        trained = ""
        if "train_time_s" in base:
            epochs = base["train_time_s"]["extra"].get("epochs")
            trained = f"After {epochs} epoch(s) of training ({base['train_time_s']['value']:.0f} s), "
        sentence = (f"{trained}{t['model']} (FP32) scores {_pct(t['value'])} top-1{ci} on {where}"
                    + (f" ({', '.join(cost)})" if cost else "") + ".")
        out.append(sentence)  # model names keep their case
    quant = [(k, m) for k, m in tops.items() if "top1_drop" in m and m["top1_drop"]["value"] is not None]
    if quant:
        quant.sort(key=lambda km: (km[1]["top1_drop"]["value"], _size(km[1]) or 0))
        picks = [quant[0]] + ([quant[-1]] if len(quant) > 1 else [])
        for k, m in picks:
            out.append(_drop_sentence(k, m, base))
        if len(quant) > 2:
            out[-1] = out[-1][:-1] + f" (the worst of {len(quant)} quantized variants)."
    elif base is None or len(tops) > 1:
        others = [(k, m) for k, m in tops.items() if k != fp32]
        for k, m in sorted(others, key=lambda km: -km[1]["top1"]["value"])[:2]:
            out.append(f"{_scheme(k[1])} on {k[2]} scores {_pct(m['top1']['value'])} top-1"
                       f" on {m['top1']['extra'].get('n_images', '?')} images.")
    return out


def _size(m: dict[str, Row]) -> float | None:
    return m["size_bytes"]["value"] if "size_bytes" in m else None


def _drop_sentence(k: tuple[str, str, str], m: dict[str, Row], base: dict[str, Row] | None) -> str:
    d = m["top1_drop"]
    e = d["extra"]
    v = d["value"]
    verb = "loses" if v > 0 else ("gains" if v < 0 else "changes by")
    amount = abs(v) if v != 0 else 0.0
    ci = f" [{e['ci_low']:.1f}, {e['ci_high']:.1f}]" if "ci_low" in e and "ci_high" in e else ""
    p = e.get("p_value")
    sig = f" (not significant: McNemar p = {p:.2g})" if isinstance(p, (int, float)) and p >= 0.05 else ""
    n = e.get("n_images") or m["top1"]["extra"].get("n_images")
    same = f" on the same {n:,} images" if n else ""
    size_q, size_f = _size(m), (_size(base) if base else None)
    smaller = ""
    if size_q and size_f:
        ratio = size_f / size_q
        word = "smaller" if ratio >= 1 else "larger"
        smaller = (f" and is {ratio if ratio >= 1 else 1 / ratio:.1f}x {word} "
                   f"({human_bytes(size_q)} vs {human_bytes(size_f)})")
    return (f"{_scheme(k[1])} {verb} {amount:.1f} points{ci} of top-1 vs FP32{same}{sig}{smaller}; "
            f"it scores {_pct(m['top1']['value'])}.")


def _bench(rows: Sequence[Row]) -> list[str]:
    """Per batch: the fastest deployment and its ratio to the fastest FP32; no verdict when timed busy."""
    cells = [c for c in bench_records(rows) if c["median_ms"]]
    if not cells:
        return []
    out = []
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        groups[(c["model"], c["batch"])].append(c)
    several = len({m for m, _ in groups}) > 1
    for (model, b), cs in sorted(groups.items()):
        who = f"{model}, batch {b}" if several else f"Batch {b}"
        busy = busy_shares([c.get("other_cpu_share") for c in cs])
        if busy:
            out.append(f"{who}: no verdict - other processes used up to {100 * max(busy):.0f}% of the CPU while "
                       "timing; rerun on a quiet machine before choosing an engine.")
            continue
        best = min(cs, key=lambda c: c["median_ms"])
        fp32 = [c for c in cs if c["variant"] == "fp32"]
        line = f"{who}: the fastest deployment is {best['engine']} {best['variant']} at {best['median_ms']:.3g} ms"
        if fp32:
            f = min(fp32, key=lambda c: c["median_ms"])
            if f is best:
                line += " (FP32 itself: no quantized deployment beat it)"
            elif latency_ci(best) and latency_ci(f) and not medians_differ(best, f):
                line += (f", within the timing noise of the fastest FP32 ({f['engine']}, {f['median_ms']:.3g} ms): "
                         "no measurable speed-up")
            else:
                line += (f", {f['median_ms'] / best['median_ms']:.2f}x the speed of the fastest FP32 "
                         f"({f['engine']}, {f['median_ms']:.3g} ms)")
        out.append(line + ".")
    return out


def fastest_per_model(rows: Sequence[Row]) -> list[str]:
    """One line per model at its smallest timed batch: the fastest deployment and its ratio to the fastest
    FP32 (no verdict where timed on a busy machine). The opening of a sweep over models that measured speed only.

    Example:
        >>> fastest_per_model([])
        []
    """
    smallest: dict[str, int] = {}
    for r in rows:
        if r["metric"] == "latency_median_ms" and r.get("batch"):
            smallest[r["model"]] = min(r["batch"], smallest.get(r["model"], r["batch"]))
    return _bench([r for r in rows if r.get("batch") is None or r["batch"] == smallest.get(r["model"])])


def _devices(rows: Sequence[Row]) -> list[str]:
    """Per imported device: its fastest engine/scheme at the smallest batch, and the speed-up over its FP32."""
    cells: dict[str, list[Row]] = defaultdict(list)
    speed: dict[tuple[str, str, str, int], float] = {}
    for r in rows:
        dev = r["extra"].get("device") if isinstance(r.get("extra"), dict) else None
        if dev is None or r["batch"] is None or r["value"] is None:
            continue
        if r["metric"] == "latency_median_ms":
            cells[str(dev)].append(r)
        elif r["metric"] == "device_speedup_vs_fp32":
            speed[(str(dev), r["engine"], r["method"], r["batch"])] = r["value"]
    out = []
    for dev, rs in sorted(cells.items()):
        b = min(r["batch"] for r in rs)
        best = min((r for r in rs if r["batch"] == b), key=lambda r: r["value"])
        engine = str(best["engine"]).rsplit("@", 1)[0]
        s = speed.get((dev, best["engine"], best["method"], b))
        ratio = f", {s:.2f}x the same engine's FP32" if s is not None and best["method"] != "fp32" else ""
        out.append(f"On {dev}, the fastest at batch {b} is {engine} {best['method']}: {best['value']:.3g} ms{ratio}.")
    return out


def _split(rows: Sequence[Row]) -> list[str]:
    """The most accurate split cell, the cheapest one within a point of it, and the best split per bandwidth."""
    cells: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(dict)
    for r in rows:
        if r["metric"] in ("split.top1", "split.bpp", "split.cr", "split.kb_per_sample") and r["value"] is not None:
            e = r["extra"]
            if e.get("noise", "none") == "none":
                c = cells[(e["split"], e["qbins"], e["companding"])]
                c[r["metric"][6:]] = r["value"]
                c["n"] = e.get("n_images")
    cells = {k: c for k, c in cells.items() if "top1" in c and "bpp" in c}
    if not cells:
        return []

    def name(k: tuple[Any, ...]) -> str:
        s, q, comp = k
        return f"split after block {s} with {q} levels ({'uniform' if comp == 'none' else comp})"

    def numbers(c: dict[str, Any]) -> str:
        extra = ", ".join(x for x in (f"CR {c['cr']:.0f}x" if "cr" in c else "",
                                      f"{c['kb_per_sample']:.2f} kB/sample" if "kb_per_sample" in c else "") if x)
        return f"{_pct(c['top1'])} top-1 at {c['bpp']:.3g} bits per pixel" + (f" ({extra})" if extra else "")

    top = max(cells, key=lambda k: cells[k]["top1"])
    cheap = min((k for k in cells if cells[k]["top1"] >= cells[top]["top1"] - 1.0), key=lambda k: cells[k]["bpp"])
    n = cells[top].get("n")
    out = [f"The most accurate cell, {name(top)}, keeps {numbers(cells[top])}"
           + (f" on {n:,} images." if n else ".")]
    if cheap != top:
        out.append(f"Within 1 point of it, the fewest bits: {name(cheap)}, {numbers(cells[cheap])}.")
    best = sorted((r for r in rows if r["metric"] == "split.best" and r["value"] is not None),
                  key=lambda r: r["extra"].get("bandwidth_mbps", 0))
    if best:
        parts = [f"block {int(r['value'])} at {r['extra'].get('bandwidth_mbps', 0):g} Mbit/s"
                 f" ({1000 * r['extra'].get('latency_s', 0):.3g} ms)" for r in best]
        out.append("Estimated fastest end-to-end split: " + ", ".join(parts) + ".")
    return out
