"""Tables for the report, computed from store rows alone (so any stored run can be reported)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from quantbench.experiments.records import TRAIN_PREFIX
from quantbench.machine_load import BUSY_SHARE, busy_shares  # THE busy test, shared with the console

Row = dict[str, Any]


def variant_key(r: Row) -> tuple[str, str, str]:
    return (r["model"], r["method"], r["engine"])


def _is_eval_metric(metric: str) -> bool:
    return metric == "loss" or (metric.startswith("top") and metric[3:].isdigit())


def is_train_eval(r: Row) -> bool:
    """An accuracy/loss row measured on training images (``train_top1``, ``train_top5``, ``train_loss``).

    The runner evaluates every variant on the test split and on a fixed subset of the
    training split; the distinct metric names keep figures (which read ``top1``) on test rows.
    """
    m = r["metric"]
    return m.startswith(TRAIN_PREFIX) and _is_eval_metric(m[len(TRAIN_PREFIX):])


def _fmt_ci(r: Row | None, digits: int = 2) -> str:
    if r is None or r["value"] is None:
        return "–"
    e = r.get("extra", {})
    if "ci_low" in e and "ci_high" in e:
        return f"{r['value']:.{digits}f} [{e['ci_low']:.{digits}f}, {e['ci_high']:.{digits}f}]"
    return f"{r['value']:.{digits}f}"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def human_count(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)}"


def summary_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """FP32 vs quantized, one line per (model, method, engine): test (and train) top-1/top-k, loss, drop, costs.

    Train columns appear when the run evaluated its variants on training images too.
    """
    by: dict[tuple[str, str, str], dict[str, Row]] = defaultdict(dict)
    train: dict[tuple[str, str, str], dict[str, Row]] = defaultdict(dict)
    topk_names: set[str] = set()
    for r in rows:
        if r["metric"].startswith("epoch.") or r["metric"].startswith("latency") or r["metric"] == "throughput_ips":
            continue
        if r["batch"] not in (None, 1):
            continue
        if is_train_eval(r):
            train[variant_key(r)][r["metric"][len(TRAIN_PREFIX):]] = r
            continue
        by[variant_key(r)][r["metric"]] = r
        if r["metric"].startswith("top") and r["metric"][3:].isdigit() and r["metric"] != "top1":
            topk_names.add(r["metric"])
    topk = sorted(topk_names, key=lambda m: int(m[3:]))
    has_loss = any("loss" in m for m in by.values())
    has_train = any(train.values())
    has_pxb = any("params_x_bits_bytes" in m for m in by.values())
    header = (["model", "method", "engine", "top-1 % [95% CI]"] + [f"top-{m[3:]} %" for m in topk]
              + (["loss (nats)"] if has_loss else [])
              + (["train top-1 %"] + [f"train top-{m[3:]} %" for m in topk] + ["train images"] if has_train else [])
              + ["drop vs FP32, points [95% CI]", "images", "params", "size on disk"]
              + (["params × bits"] if has_pxb else []) + ["MACs/image"])
    body = []
    for key, m in by.items():
        model, method, engine = key
        if "top1" not in m and "size_bytes" not in m:
            continue
        n = m.get("top1", {}).get("extra", {}).get("n_images") if "top1" in m else None
        t = train.get(key, {})
        tn = t.get("top1", {}).get("extra", {}).get("n_images") if "top1" in t else None
        body.append([model, method, engine, _fmt_ci(m.get("top1"))]
                    + [_fmt_ci(m.get(k), 2).split(" [")[0] for k in topk]
                    + ([_fmt_ci(m.get("loss"), 4)] if has_loss else [])
                    + ([_fmt_ci(t.get("top1")).split(" [")[0]] + [_fmt_ci(t.get(k)).split(" [")[0] for k in topk]
                       + [str(tn) if tn else "–"] if has_train else [])
                    + [_fmt_ci(m.get("top1_drop")), str(n) if n else "–",
                       human_count(m["params"]["value"]) if "params" in m else "–",
                       human_bytes(m["size_bytes"]["value"]) if "size_bytes" in m else "–"]
                    + ([human_bytes(m["params_x_bits_bytes"]["value"]) if "params_x_bits_bytes" in m else "–"]
                       if has_pxb else [])
                    + [human_count(m["macs"]["value"]) if "macs" in m else "–"])
    return header, body


def latency_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Latency (median, p90) and throughput per variant and batch size."""
    by: dict[tuple[Any, ...], dict[str, Row]] = defaultdict(dict)
    for r in rows:
        if r["metric"] in ("latency_median_ms", "latency_p90_ms", "throughput_ips"):
            by[(*variant_key(r), r["batch"])][r["metric"]] = r
    with_ci = any(latency_ci(m["latency_median_ms"]["extra"]) for m in by.values() if "latency_median_ms" in m)
    header = ["model", "method", "engine", "batch", "median ms"] + (["95% CI ms"] if with_ci else []) + [
        "p90 ms", "images/s", "threads", "iterations", "others' CPU % while timing"]
    body = []
    for (model, method, engine, batch), m in sorted(by.items(), key=lambda kv: tuple(str(x) for x in kv[0][:3]) + (kv[0][3],)):
        med = m.get("latency_median_ms")
        extra = med["extra"] if med else {}
        share = extra.get("other_cpu_share")
        ci = latency_ci(extra)
        body.append([model, method, engine, str(batch),
                     f"{med['value']:.3f}" if med else "–"]
                    + ([f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"] if with_ci else [])
                    + [f"{m['latency_p90_ms']['value']:.3f}" if "latency_p90_ms" in m
                     else (f"{extra['p90_ms']:.3f}" if "p90_ms" in extra else "–"),
                     f"{m['throughput_ips']['value']:.1f}" if "throughput_ips" in m else "–",
                     str(extra.get("threads", "–")), str(extra.get("iterations", "–")),
                     f"{100 * share:.0f}" if share is not None else "–"])
    return header, body


def latency_ci(extra: dict[str, Any]) -> tuple[float, float] | None:
    """The 95% interval of a median latency (``median_ci_low_ms``/``median_ci_high_ms``), None when absent.

    Example:
        >>> latency_ci({"median_ci_low_ms": 1.0, "median_ci_high_ms": 1.2}), latency_ci({})
        ((1.0, 1.2), None)
    """
    lo, hi = extra.get("median_ci_low_ms"), extra.get("median_ci_high_ms")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        return (float(lo), float(hi))
    return None


def busy_machine_lines(rows: Sequence[Row], threshold: float = BUSY_SHARE) -> list[str]:
    """Plain-words warnings for latencies timed while other processes used over ``threshold`` of the CPU.

    Example:
        >>> busy_machine_lines([{"metric": "latency_median_ms", "extra": {"other_cpu_share": 0.5}}])[0][:40]
        '1 of 1 latencies were timed while other '
    """
    lat = [r for r in rows if r["metric"] == "latency_median_ms"]
    shares = [r["extra"].get("other_cpu_share") for r in lat]
    busy = busy_shares(shares, threshold)
    if not busy:
        return []
    return [f"{len(busy)} of {len(lat)} latencies were timed while other processes used more than "
            f"{100 * threshold:.0f}% of this machine's CPU (up to {100 * max(busy):.0f}%; column \"others' CPU %\"). "
            "Those numbers measure the contention as much as the model: read them as upper bounds and rerun "
            "on a quiet machine before comparing engines or schemes."]


def training_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Last-epoch numbers and wall-clock training time per trained variant."""
    last: dict[tuple[str, str, str], dict[str, Row]] = defaultdict(dict)
    for r in rows:
        if r["metric"].startswith("epoch."):
            cur = last[variant_key(r)].get(r["metric"])
            if cur is None or r["extra"].get("epoch", 0) >= cur["extra"].get("epoch", 0):
                last[variant_key(r)][r["metric"]] = r
        elif r["metric"] == "train_time_s":
            last[variant_key(r)]["train_time_s"] = r
    header = ["model", "method", "epochs", "train loss", "train top-1 %", "val loss", "val top-1 %", "training time s",
              "s / epoch"]
    body = []
    for (model, method, _engine), m in last.items():
        def v(name: str, fmt: str = "{:.3f}", m: dict[str, Row] = m) -> str:
            return fmt.format(m[name]["value"]) if name in m and m[name]["value"] is not None else "–"
        epochs = m.get("train_time_s", {}).get("extra", {}).get("epochs", "–")
        per_epoch = ("–" if "train_time_s" not in m or not isinstance(epochs, int) or epochs < 1
                     else f"{m['train_time_s']['value'] / epochs:.2f}")
        body.append([model, method, str(epochs), v("epoch.train_loss"), v("epoch.train_top1", "{:.2f}"),
                     v("epoch.val_loss"), v("epoch.val_top1", "{:.2f}"), v("train_time_s", "{:.1f}"), per_epoch])
    return header, body


def histories(rows: Sequence[Row]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{variant label: {metric: [(epoch, value), ...]}} for the training-curve figure."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["metric"].startswith("epoch.") and r["value"] is not None:
            label = f"{r['model']} {r['method']}"
            out[label][r["metric"][6:]].append((int(r["extra"]["epoch"]), float(r["value"])))
    return {k: {m: sorted(v) for m, v in d.items()} for k, d in out.items()}


def sensitivity_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Per-layer SQNR and top-1 with only that layer quantized, per quantized variant, beside the float
    top-1 on the same images (a row's top-1 read against FP32 on other images looks like a gain)."""
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        if r["metric"] in ("layer_sqnr_db", "layer_only_top1") and "mode" not in r["extra"]:  # mode: debug rows
            c = cells.setdefault((r["method"], r["extra"]["index"]), {"extra": r["extra"]})
            c[r["metric"]] = r["value"]
    ns = {c["extra"].get("n_images") for c in cells.values()}
    n = next(iter(ns)) if len(ns) == 1 else None
    same = f"FP32 top-1 % on the same {n} images" if n else "FP32 top-1 % on the same images"
    header = ["method", "layer", "type", "spec", "params", "SQNR dB", "top-1 % (only this layer quantized)", same]
    body = []
    for (method, _i), c in sorted(cells.items()):
        e = c["extra"]
        sq = c.get("layer_sqnr_db")
        fp = e.get("fp32_top1_same_images")
        body.append([method, e["layer"], e.get("kind", ""), e.get("spec", ""), str(e.get("params", "")),
                     "inf" if sq is None else f"{sq:.1f}", f"{c.get('layer_only_top1', float('nan')):.2f}",
                     "–" if fp is None else f"{fp:.2f}"])
    return header, body


_BENCH_METRICS = ("latency_median_ms", "latency_p90_ms", "throughput_ips", "gmacs_per_s", "fraction_of_peak",
                  "speedup_vs_fp32", "speedup_vs_torch_fp32")


def bench_records(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Engine-benchmark cells rebuilt from store rows: one dict per (model, engine, variant, batch).

    Only runs that carry ``speedup_vs_torch_fp32`` rows (``quantbench bench``) produce any.
    """
    if not any(r["metric"] == "speedup_vs_torch_fp32" for r in rows):
        return []
    cells: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    rss: dict[tuple[str, str, str], float] = {}
    for r in rows:
        if r["engine"] == "machine":
            continue
        if r["metric"] == "peak_rss_bytes":
            rss[(r["model"], r["engine"], r["method"])] = r["value"]
        if r["metric"] in _BENCH_METRICS and r["batch"] is not None:
            c = cells.setdefault((r["model"], r["engine"], r["method"], r["batch"]), {
                "model": r["model"], "engine": r["engine"], "variant": r["method"], "batch": r["batch"]})
            name = {"latency_median_ms": "median_ms", "latency_p90_ms": "p90_ms"}.get(r["metric"], r["metric"])
            c[name] = r["value"]
            if r["metric"] == "latency_median_ms":
                c["median_ci_low_ms"] = r["extra"].get("median_ci_low_ms")
                c["median_ci_high_ms"] = r["extra"].get("median_ci_high_ms")
                c["threads"] = r["extra"].get("threads")
                c["other_cpu_share"] = r["extra"].get("other_cpu_share")
    out = []
    for (model, engine, variant, _b), c in sorted(cells.items()):
        for m in ("median_ms", "p90_ms", "throughput_ips", "gmacs_per_s", "fraction_of_peak", "speedup_vs_fp32",
                  "speedup_vs_torch_fp32"):
            c.setdefault(m, None)
        c["peak_rss_bytes"] = rss.get((model, engine, variant))
        out.append(c)
    return out


def speed_findings(records: Sequence[dict[str, Any]]) -> list[str]:
    """Plain sentences: where a quantized variant is SLOWER than FP32 on its engine, and the fastest cell.

    Why: the literature disagrees on whether quantized CNNs run faster; the report says it
    plainly for this machine instead of leaving it to a chart. ``torch-int8`` is compared with
    ``torch`` fp32 (it has no fp32 of its own).
    """
    out = []
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r.get("model", ""), r["engine"], r["variant"])].append(r)
    for (model, engine, variant), rs in sorted(groups.items()):
        if variant == "fp32":
            continue
        slower = sorted((r for r in rs if r["speedup_vs_fp32"] is not None and r["speedup_vs_fp32"] < 1.0),
                        key=lambda r: r["batch"])
        if slower:
            lo = min(r["speedup_vs_fp32"] for r in slower)
            hi = max(r["speedup_vs_fp32"] for r in slower)
            span = f"{lo:.2f}x" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}x"
            base = "torch" if engine == "torch-int8" else engine
            out.append(f"{model + ' ' if model else ''}{engine} {variant} is SLOWER than {base} fp32 at batch "
                       f"{', '.join(str(r['batch']) for r in slower)} ({span} the fp32 speed): {variant} did not "
                       "make this model faster on this engine here.")  # fmt: skip
    by_batch: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["speedup_vs_torch_fp32"] is not None:
            by_batch[(r.get("model", ""), r["batch"])].append(r)
    for (model, b), rs in sorted(by_batch.items()):
        best = max(rs, key=lambda r: r["speedup_vs_torch_fp32"])
        out.append(f"{model + ', ' if model else ''}batch {b}: fastest is {best['engine']} {best['variant']} at "
                   f"{best['median_ms']:.3g} ms, {best['speedup_vs_torch_fp32']:.2f}x PyTorch eager fp32.")
        out += _best_vs_best(model, b, rs)
    over = sorted({(r.get("model", ""), r["engine"], r["variant"]) for r in records
                   if (r.get("fraction_of_peak") or 0) > 1.0})
    if over:
        names = ", ".join(f"{m + ' ' if m else ''}{e} {v}" for m, e, v in over)
        out.append(f"{names} ran above this machine's measured GEMM peak (% of peak over 100): its kernels do fewer "
                   "multiplications than the counted MACs (e.g. Winograd convolutions) or the peak GEMM was measured "
                   "low; read % of peak as approximate.")
    return out


def _best_vs_best(model: str, batch: int, rs: Sequence[dict[str, Any]]) -> list[str]:
    """What quantization buys against the best FP32 deployment here, not against eager PyTorch."""
    ms = [r for r in rs if r.get("median_ms")]
    fp32 = [r for r in ms if r["variant"] == "fp32"]
    quant = [r for r in ms if r["variant"] in ("int8", "dynamic")]
    if not fp32 or not quant:
        return []
    f, q = min(fp32, key=lambda r: r["median_ms"]), min(quant, key=lambda r: r["median_ms"])
    return [f"{model + ', ' if model else ''}batch {batch}: the fastest quantized model ({q['engine']} {q['variant']}, "
            f"{q['median_ms']:.3g} ms) is {f['median_ms'] / q['median_ms']:.2f}x the fastest FP32 one "
            f"({f['engine']}, {f['median_ms']:.3g} ms): what quantization buys against the best FP32 deployment "
            "measured here."]


def bench_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Engine benchmark: latency, throughput, GMAC/s, fraction of peak, speed-ups, peak RSS per cell."""
    cells = bench_records(rows)
    with_ci = any(latency_ci(c) for c in cells)
    header = ["model", "engine", "variant", "batch", "median ms"] + (["95% CI ms"] if with_ci else []) + [
        "p90 ms", "images/s", "GMAC/s", "% of peak", "x same-engine fp32", "x torch fp32", "peak RSS", "threads",
        "others' CPU %"]

    def f(v: float | None, fmt: str) -> str:
        return "–" if v is None else fmt.format(v)

    def ci(c: dict[str, Any]) -> list[str]:
        if not with_ci:
            return []
        ci = latency_ci(c)
        return [f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"]

    body = [[c["model"], c["engine"], c["variant"], str(c["batch"]), f(c["median_ms"], "{:.3f}"), *ci(c),
             f(c["p90_ms"], "{:.3f}"), f(c["throughput_ips"], "{:.1f}"), f(c["gmacs_per_s"], "{:.1f}"),
             f(c["fraction_of_peak"] and 100 * c["fraction_of_peak"], "{:.0f}%"), f(c["speedup_vs_fp32"], "{:.2f}"),
             f(c["speedup_vs_torch_fp32"], "{:.2f}"), human_bytes(c["peak_rss_bytes"]), str(c.get("threads", "–")),
             f(c.get("other_cpu_share") and 100 * c["other_cpu_share"], "{:.0f}")]
            for c in cells]
    return header, body


def peaks_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """This machine's measured GEMM peaks (what "% of peak" divides by)."""
    seen: dict[str, Row] = {}
    for r in rows:
        if r["metric"] == "peak_gmacs_per_s":
            seen.setdefault(r["method"], r)
    body = [[prec, f"{r['value']:.1f}", f"{2 * r['value']:.1f}", str(r["extra"].get("source", "")),
             str(r["extra"].get("threads", ""))] for prec, r in sorted(seen.items())]
    return ["precision", "GMAC/s", "GFLOP/s", "measured with", "threads"], body


def device_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Imported device measurements side by side: latency, speed-up over that device's FP32 on the same engine,
    and the device-profile estimate with its error."""
    cells: dict[tuple[Any, ...], dict[str, Row]] = defaultdict(dict)
    for r in rows:
        dev = r["extra"].get("device") if isinstance(r.get("extra"), dict) else None
        if dev is None or r["batch"] is None:
            continue
        engine = str(r["engine"]).rsplit("@", 1)[0]  # stored as ENGINE@DEVICE
        cells[(r["model"], dev, engine, r["method"], r["batch"])][r["metric"]] = r
    header = ["model", "device", "engine", "scheme", "batch", "median ms", "p90 ms", "x device fp32", "estimated ms",
              "estimate error", "estimate's rate"]
    body = []
    for (model, dev, engine, scheme, b), m in sorted(cells.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        if "latency_median_ms" not in m:
            continue

        def v(name: str, fmt: str, m: dict[str, Row] = m) -> str:
            return fmt.format(m[name]["value"]) if name in m and m[name]["value"] is not None else "–"

        body.append([model, str(dev), engine, scheme, str(b), v("latency_median_ms", "{:.3f}"),
                     v("latency_p90_ms", "{:.3f}"),
                     v("device_speedup_vs_fp32", "{:.2f}"), v("estimated_latency_ms", "{:.3f}"),
                     v("estimate_error", "{:+.0%}"), _rate(m.get("estimated_latency_ms"))])
    return header, body


def _rate(est: Row | None) -> str:
    """``41 GMAC/s (measured)``: the rate an estimate divided by and where it came from (measured/published/given)."""
    if est is None or not isinstance(est["extra"].get("profile_gmacs"), (int, float)):
        return "–"
    source = est["extra"].get("profile_source")
    return f"{est['extra']['profile_gmacs']:.3g} GMAC/s" + (f" ({source})" if source else "")


def device_ceiling_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Imported devices' GEMM ceilings, measured there by run_bundle.py (what split --edge NAME uses)."""
    body = [[str(r["extra"].get("device")), str(r["extra"].get("precision")), f"{r['value']:.1f}",
             f"{2 * r['value']:.1f}", f"{r['extra'].get('op')} {r['extra'].get('kernel')}",
             str(r["extra"].get("runtime")), str(r["extra"].get("threads") or "default"), "measured"]
            for r in rows if r["metric"] == "device_gemm_gmacs_per_s"]
    return ["device", "precision", "GMAC/s", "GOP/s (2 x MACs)", "fastest kernel", "runtime", "threads",
            "source"], sorted(body)


def split_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Split computing: split x qbins x companding (x noise) -> top-1, bpp, CR, kB/sample, edge/cloud MACs."""
    cells: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        if not r["metric"].startswith("split.") or r["metric"] in ("split.latency_s", "split.best",
                                                                   "split.recover_psnr_db"):
            continue
        e = r["extra"]
        c = cells.setdefault((e["split"], e["qbins"], e["companding"], e["noise"]), {"block": e.get("block")})
        c[r["metric"][6:]] = r["value"]
    header = ["split", "block", "qbins", "companding", "noise", "top-1 %", "top-5 %", "bpp", "order-0 bpp", "CR",
              "kB/sample", "edge MACs", "cloud MACs"]

    def f(v: Any, fmt: str) -> str:
        return "–" if v is None else fmt.format(v)

    body = [[str(s), str(c["block"]), str(q), comp, noise, f(c.get("top1"), "{:.2f}"), f(c.get("top5"), "{:.2f}"),
             f(c.get("bpp"), "{:.3f}"), f(c.get("order0_entropy_bpp"), "{:.3f}"), f(c.get("cr"), "{:.1f}"),
             f(c.get("kb_per_sample"), "{:.3f}"), human_count(c.get("edge_macs")), human_count(c.get("cloud_macs"))]
            for (s, q, comp, noise), c in sorted(cells.items(), key=lambda kv: tuple(str(x) for x in kv[0]))]
    return header, body


def recover_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """How much of the input a linear decoder recovers from the split's features (PSNR, dB)."""
    body = [[str(r["extra"].get("split")), str(r["extra"].get("features")), f"{r['value']:.2f}",
             f"{r['extra'].get('baseline_psnr_db', float('nan')):.2f}"]
            for r in rows if r["metric"] == "split.recover_psnr_db" and r["value"] is not None]
    return ["split", "features", "recovered PSNR dB (linear decoder)", "mean-image PSNR dB (baseline)"], body
