"""``quantbench compare RUN_A RUN_B``: what changed between two stored runs, with honest intervals.

Accuracy: when both runs stored per-image hits of the SAME images (same ``images_sha256``), the
difference is paired (Newcombe interval, exact McNemar p, via
:func:`quantbench.measure.accuracy.paired_difference`); otherwise the report says why and falls
back to the unpaired difference (square-and-add of the two stored Wilson intervals). Size and
latency: per variant, and per engine/variant/batch, present in both runs. Differences are B - A.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError
from quantbench.machine_load import BUSY_SHARE, busy_shares, medians_differ
from quantbench.report.tables import human_bytes, latency_ci
from quantbench.store import ResultStore

Row = dict[str, Any]


@dataclass(frozen=True)
class Comparison:
    """Run B against run A.

    Attributes:
        run_a: the first run's id; run_b: the second's.
        accuracy: per matched variant: top-1 of A and B, ``diff_points`` (B - A), its 95% CI,
            ``p_value`` (paired only), ``n``, ``paired`` and, when unpaired, ``reason``.
        size: per matched variant: bytes of A and B and ``ratio`` (A / B: > 1 = B smaller).
        latency: per engine/variant/batch in both: median ms of A and B, ``ratio`` (B / A: < 1 =
            B faster), ``busy`` when either was timed on a loaded machine.
        notes: sentences a reader must see (fall-backs, different machines).
    """

    run_a: str
    run_b: str
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    size: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form.

        Example:
            >>> Comparison("a", "b").as_dict()["notes"]
            []
        """
        return asdict(self)


def unpaired_difference(a: Row, b: Row) -> tuple[float, float, float]:
    """(B - A, low, high) in points from two stored top-1 rows, for images that do not pair up.

    Newcombe's square-and-add (method 10) of each row's stored 95% Wilson interval: wider than
    the paired interval, as it must be when the images differ.

    Example:
        >>> a = {"value": 90.0, "extra": {"ci_low": 88.0, "ci_high": 92.0}}
        >>> b = {"value": 85.0, "extra": {"ci_low": 82.0, "ci_high": 88.0}}
        >>> [round(x, 2) for x in unpaired_difference(a, b)]
        [-5.0, -8.61, -1.39]
    """
    pa, pb = a["value"], b["value"]
    la, ua = a["extra"].get("ci_low", pa), a["extra"].get("ci_high", pa)
    lb, ub = b["extra"].get("ci_low", pb), b["extra"].get("ci_high", pb)
    d = pb - pa
    return d, d - math.hypot(pb - lb, ua - pa), d + math.hypot(ub - pb, pa - la)


def _index(rows: Sequence[Row], metric: str, with_batch: bool = False) -> dict[tuple[Any, ...], Row]:
    out: dict[tuple[Any, ...], Row] = {}
    for r in rows:
        if r["metric"] == metric and r["value"] is not None:
            out.setdefault((r["method"], r["engine"], *((r["batch"],) if with_batch else ())), r)
    return out


def _pairs(a: dict[tuple[Any, ...], Row], b: dict[tuple[Any, ...], Row]) -> list[tuple[Row, Row]]:
    """Rows about the same variant (method, engine) in both runs; then, when each run has exactly one
    variant left (two PTQ runs of different methods), those two against each other."""
    common = [k for k in a if k in b]
    out = [(a[k], b[k]) for k in common]
    rest_a, rest_b = [k for k in a if k not in b], [k for k in b if k not in a]
    if len(rest_a) == 1 and len(rest_b) == 1:
        out.append((a[rest_a[0]], b[rest_b[0]]))
    return out


def _name(r: Row, models_differ: bool) -> str:
    return (f"{r['model']} " if models_differ else "") + f"{r['method']} / {r['engine']}"


def compare_runs(store_path: str | Path, run_a: str, run_b: str) -> Comparison:
    """Paired (when possible) accuracy, size and latency differences of run B against run A.

    Raises:
        QuantbenchError: an unknown run id (or prefix), or a run with no accuracy, size or latency rows.

    Example:
        >>> c = compare_runs("runs/quantbench.db", "20240101-a", "20240101-b")  # doctest: +SKIP
        >>> c.accuracy[0]["diff_points"], c.accuracy[0]["paired"]  # doctest: +SKIP
        (-0.4, True)
    """
    from quantbench.experiments.records import correct_from_extra
    from quantbench.measure.accuracy import paired_difference

    if not Path(store_path).is_file():
        raise QuantbenchError(f"{store_path}: no results store here (pass --store DB)")
    with ResultStore(store_path) as store:
        ra, rb = store.run(run_a), store.run(run_b)
        rows_a, rows_b = store.query(run_id=ra["run_id"]), store.query(run_id=rb["run_id"])
    for run, rows in ((ra, rows_a), (rb, rows_b)):
        if not any(r["metric"] in ("top1", "size_bytes", "latency_median_ms") and r["value"] is not None
                   for r in rows):
            raise QuantbenchError(f"run {run['run_id']} ({run['kind']}): stored no top-1, size or latency rows; "
                                  "expected a run of eval, train, ptq, qat, mixed, run or bench to compare")
    models_differ = {r["model"] for r in rows_a} != {r["model"] for r in rows_b}
    out = Comparison(ra["run_id"], rb["run_id"])
    for a, b in _pairs(_index(rows_a, "top1"), _index(rows_b, "top1")):
        ca, cb = correct_from_extra(a["extra"]), correct_from_extra(b["extra"])
        same = a["extra"].get("images_sha256") is not None and a["extra"].get("images_sha256") == b["extra"].get(
            "images_sha256")
        rec = {"a": _name(a, models_differ), "b": _name(b, models_differ), "top1_a": a["value"],
               "top1_b": b["value"], "n_a": a["extra"].get("n_images"), "n_b": b["extra"].get("n_images")}
        if ca is not None and cb is not None and same and ca.size == cb.size:
            pd = paired_difference(ca, cb)
            rec.update(diff_points=pd.diff_points, ci_low=pd.ci_low, ci_high=pd.ci_high, p_value=pd.p_value,
                       n=pd.n, paired=True, reason="")
        else:
            if ca is None or cb is None:
                which = " and ".join(x for x, c in (("A", ca), ("B", cb)) if c is None)
                reason = (f"run {which} stored no per-image results (made before quantbench stored them); "
                          "rerun it to get a paired difference")
            else:
                reason = (f"the runs scored different images ({a['data']} {a['extra'].get('split', '?')} "
                          f"n={rec['n_a']} vs {b['data']} {b['extra'].get('split', '?')} n={rec['n_b']})")
            d, lo, hi = unpaired_difference(a, b)
            rec.update(diff_points=d, ci_low=lo, ci_high=hi, p_value=None, n=None, paired=False, reason=reason)
            out.notes.append(f"{rec['b']} vs {rec['a']}: unpaired difference, because {reason}.")
        out.accuracy.append(rec)
    for a, b in _pairs(_index(rows_a, "size_bytes"), _index(rows_b, "size_bytes")):
        out.size.append({"a": _name(a, models_differ), "b": _name(b, models_differ), "bytes_a": a["value"],
                         "bytes_b": b["value"], "ratio": a["value"] / b["value"] if b["value"] else None})
    la, lb = _index(rows_a, "latency_median_ms", True), _index(rows_b, "latency_median_ms", True)
    for k in [k for k in la if k in lb]:
        a, b = la[k], lb[k]
        busy = bool(busy_shares([a["extra"].get("other_cpu_share"), b["extra"].get("other_cpu_share")]))
        out.latency.append({"variant": k[0], "engine": k[1], "batch": k[2], "ms_a": a["value"], "ms_b": b["value"],
                            "ci_a": latency_ci(a["extra"]), "ci_b": latency_ci(b["extra"]),
                            "ratio": b["value"] / a["value"], "busy": busy,
                            "differ": medians_differ(a["extra"], b["extra"])})
    cpu_a, cpu_b = ((r["environment"] or {}).get("cpu_model") for r in (ra, rb))
    if out.latency and cpu_a != cpu_b:
        out.notes.append(f"The latencies were measured on different machines ({cpu_a} vs {cpu_b}): their ratio "
                         "mixes the machines with the models.")
    if any(x["busy"] for x in out.latency):
        out.notes.append("Some latencies were timed while other processes used more than "
                         f"{100 * BUSY_SHARE:.0f}% of the CPU (marked busy): no verdict on those.")
    if not (out.accuracy or out.size or out.latency):
        raise QuantbenchError(f"runs {ra['run_id']} and {rb['run_id']} have no variant, engine or batch in common "
                              "(method/engine of their top-1, size and latency rows); nothing to compare")
    return out


def compare_answer(c: Comparison) -> list[str]:
    """One to three sentences: the largest accuracy difference, the size ratio, the latency ratio.

    Example:
        >>> compare_answer(Comparison("a", "b", size=[{"a": "fp32 / torch", "b": "w8a8 / torch",
        ...     "bytes_a": 4e6, "bytes_b": 1e6, "ratio": 4.0}]))[0]
        'B (w8a8 / torch) is 4.00x smaller than A (fp32 / torch): 1.00 MB vs 4.00 MB.'
    """
    out = []
    if c.accuracy:
        r = max(c.accuracy, key=lambda x: abs(x["diff_points"]))
        verb = "scores" if r["diff_points"] > 0 else ("loses" if r["diff_points"] < 0 else "differs by")
        how = (f"paired on the same {r['n']:,} images, McNemar p = {r['p_value']:.2g}"
               + ("" if r["p_value"] < 0.05 else ": not significant") if r["paired"] else
               "unpaired: " + r["reason"])
        amount = f"{abs(r['diff_points']):.2f} points" + (" more" if verb == "scores" else "")
        out.append(f"B ({r['b']}) {verb} {amount} of top-1 than A ({r['a']}) "
                   f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}] ({how}).")
    sized = [s for s in c.size if s["ratio"]]
    if sized:
        s = max(sized, key=lambda s: abs(math.log(s["ratio"])))
        if s["bytes_a"] == s["bytes_b"]:
            out.append(f"B ({s['b']}) and A ({s['a']}) are the same size: {human_bytes(s['bytes_a'])}.")
        else:
            word = f"{s['ratio']:.2f}x smaller" if s["ratio"] >= 1 else f"{1 / s['ratio']:.2f}x larger"
            out.append(f"B ({s['b']}) is {word} than A ({s['a']}): {human_bytes(s['bytes_b'])} vs "
                       f"{human_bytes(s['bytes_a'])}.")
    quiet = [x for x in c.latency if not x["busy"]]
    if quiet:
        x = min(quiet, key=lambda x: x["batch"])
        noise = "" if x.get("differ", True) else "; the intervals overlap: no measurable difference"
        out.append(f"At batch {x['batch']} on {x['engine']} ({x['variant']}), B takes {x['ratio']:.2f}x the time of "
                   f"A ({x['ms_b']:.3g} vs {x['ms_a']:.3g} ms{noise}).")
    elif c.latency:
        out.append("No latency verdict: every common latency was timed on a busy machine.")
    return out or ["The two runs share no number to compare."]


def compare_tables(c: Comparison) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """The comparison's tables (accuracy, size, latency, notes), each only when it has rows."""
    acc = [[r["a"], r["b"], f"{r['top1_a']:.2f}", f"{r['top1_b']:.2f}",
            f"{r['diff_points']:+.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]",
            f"{r['p_value']:.3g}" if r["p_value"] is not None else "–",
            f"paired, {r['n']} images" if r["paired"] else f"unpaired ({r['n_a']} vs {r['n_b']} images)"]
           for r in c.accuracy]
    size = [[s["a"], s["b"], human_bytes(s["bytes_a"]), human_bytes(s["bytes_b"]),
             f"{s['ratio']:.2f}" if s["ratio"] else "–"] for s in c.size]

    def ms(v: float, ci: tuple[float, float] | None) -> str:
        return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    lat = [[x["engine"], x["variant"], str(x["batch"]), ms(x["ms_a"], x["ci_a"]), ms(x["ms_b"], x["ci_b"]),
            f"{x['ratio']:.2f}", "busy: no verdict" if x["busy"] else ""] for x in c.latency]
    secs = [("Accuracy: B - A", (["A", "B", "A top-1 %", "B top-1 %", "B - A, points [95% CI]", "McNemar p",
                                 "how"], acc)),
            ("Size on disk", (["A", "B", "A", "B", "A / B (> 1: B smaller)"], size)),
            ("Latency (median of one batch)", (["engine", "variant", "batch", "A ms", "B ms",
                                               "B / A (< 1: B faster)", "note"], lat)),
            ("Read this", (["note"], [[n] for n in c.notes]))]
    return [s for s in secs if s[1][1]]


def compare_figure(c: Comparison) -> Any:
    """One figure: accuracy differences with their CIs (left), size and latency ratios B/A (right, log)."""
    from quantbench.report.figures import Figure, matplotlib_available
    from quantbench.report.figures.common import _plt, _png

    ratios = [(f"size {s['b']}", 1.0 / s["ratio"]) for s in c.size if s["ratio"]] + [
        (f"latency {x['engine']} {x['variant']} b{x['batch']}", x["ratio"]) for x in c.latency if not x["busy"]]
    if not matplotlib_available() or not (c.accuracy or ratios):
        return None
    plt = _plt()
    panels = [p for p in ("acc", "ratio") if (p == "acc" and c.accuracy) or (p == "ratio" and ratios)]
    n = max(len(c.accuracy), len(ratios))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 2, 1.2 + 0.4 * n), squeeze=False)
    for ax, p in zip(axes[0], panels, strict=True):
        if p == "acc":
            ys = list(range(len(c.accuracy)))[::-1]
            d = [r["diff_points"] for r in c.accuracy]
            ax.errorbar(d, ys, xerr=[[r["diff_points"] - r["ci_low"] for r in c.accuracy],
                                     [r["ci_high"] - r["diff_points"] for r in c.accuracy]], fmt="o", capsize=3)
            ax.axvline(0, color="0.4", ls="--", lw=0.8)
            ax.set_yticks(ys, [r["b"] + ("" if r["paired"] else " (unpaired)") for r in c.accuracy], fontsize=8)
            ax.set(xlabel="top-1 of B minus A (points, 95% CI)", title="accuracy")
        else:
            ys = list(range(len(ratios)))[::-1]
            ax.plot([v for _, v in ratios], ys, "s", color="#55A868")
            ax.axvline(1.0, color="0.4", ls="--", lw=0.8)
            ax.set_xscale("log")
            ax.set_yticks(ys, [name for name, _ in ratios], fontsize=8)
            ax.set(xlabel="B / A (< 1: B smaller or faster)", title="size and latency")
        ax.grid(axis="x", alpha=0.3)
    paired = [r for r in c.accuracy if r["paired"]]
    caption = (f"Run B ({c.run_b}) against run A ({c.run_a}). Left: top-1 difference B - A per variant with its 95% "
               "CI" + (f", paired on the same {paired[0]['n']} images (Newcombe)" if paired else "")
               + ("; '(unpaired)' marks variants whose images did not pair up (wider, square-and-add interval)"
                  if len(paired) < len(c.accuracy) else "")
               + ". Right: B / A of bytes on disk and of the median latency of one batch (log scale; < 1 = B "
               "smaller or faster); latencies timed on a busy machine are left out.")
    return Figure("compare", _png(fig), caption)


def write_compare_report(store_path: str | Path, run_a: str, run_b: str,
                         out_dir: str | Path | None = None) -> tuple[Comparison, Path, Path]:
    """Compare two runs and write ``report.html``/``report.md`` (+ the figure) into ``out_dir``.

    ``out_dir`` defaults to ``compare-A-B`` beside the store.

    Example:
        >>> c, html, md = write_compare_report("runs/quantbench.db", "run-a", "run-b")  # doctest: +SKIP
    """
    from quantbench.paths import safe_component
    from quantbench.report.render import write_page

    c = compare_runs(store_path, run_a, run_b)
    out = Path(out_dir) if out_dir else Path(store_path).parent / safe_component(f"compare-{c.run_a}-{c.run_b}")
    with ResultStore(store_path) as store:
        ra, rb = store.run(c.run_a), store.run(c.run_b)
    from quantbench.report.render import run_model_data

    (ma, da), (mb, db) = run_model_data(ra["config"]), run_model_data(rb["config"])
    header = {"run_id": f"{c.run_a} vs {c.run_b}", "kind": "compare", "name": "compare B vs A",
              "environment": rb["environment"],
              "config": {"model": {"name": f"A: {ma} ({ra['kind']}); B: {mb} ({rb['kind']})"},
                         "data": {"spec": da if da == db else f"A: {da}; B: {db}"}}}
    fig = compare_figure(c)
    html, md = write_page(header, out, compare_answer(c), compare_tables(c), [fig] if fig else [])
    return c, html, md
