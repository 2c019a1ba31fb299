"""``recommend``: which quantized deployment to use on this machine, answered with measurements.

The question users ask in every peer's tracker is not "what does W8A8 do" but "which model and
engine should I ship, and what do I give up". The answer needs three measurements joined on the
same model and images, which users otherwise join by hand: the accuracy drop of each candidate
method, its packed size, and its latency on every engine here. This module makes the candidates
(:func:`make_candidates`), times them (:func:`time_candidates`) and words the answer
(:func:`compose_answer`); the ``recommend`` kind (:mod:`quantbench.experiments.kinds.recommend`)
runs it in the experiment layer, so it is stored and reported like any run.

Honesty rules the answer follows:

* choices (which candidates are within ``max_drop``, accuracy control) use the validation split
  only; the drop quoted in the answer is measured on evaluation images that no choice saw;
* a candidate is eligible when its validation drop's one-sided upper bound is within ``max_drop``;
* speed: among eligible deployments the fastest median at the answer's batch size wins (deployments
  within its timing noise tie, and the one with the smaller validation drop bound wins the tie), but
  when its latency interval overlaps the fastest FP32 deployment's, or it is less than
  :data:`MIN_SPEEDUP` faster, the answer says there is no measurable speed-up and recommends the
  smallest eligible model instead;
* on a busy machine (THE busy test, :func:`quantbench.measure.latency.busy_shares`) no speed verdict is
  given at all: the answer names the load and recommends by accuracy and size.

Example:
    >>> lines = compose_answer(candidates, deployments, machine="AMD EPYC", batch=1, max_drop=1.0)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from quantbench.errors import QuantbenchError

__all__ = ["MIN_SPEEDUP", "Candidate", "Deployment", "compose_answer", "cpu_summary", "deployment_title", "engine_title",
           "merge_rounds", "non_dominated", "pareto_rows", "speedup_range"]

MIN_SPEEDUP = 1.05
"""The least speed-up over the fastest FP32 the answer calls one: within one run the median's bootstrap
interval decides, but separate runs of the same command on a quiet machine differ by a few percent
(recommend_check: 2.56x vs 2.78x; 1.04x then 1.02x on a 0.27 ms model), so a smaller gain is no reason to ship."""

ENGINE_TITLES = {"torch": "PyTorch eager", "torch-int8": "PyTorch INT8", "onnxruntime": "ONNX Runtime",
                 "openvino": "OpenVINO", "litert": "LiteRT", "torch-compile": "PyTorch compiled"}


def engine_title(engine: str) -> str:
    """A person's name for an engine (``onnxruntime`` -> ``ONNX Runtime``)."""
    return ENGINE_TITLES.get(engine, engine)


@dataclass
class Candidate:
    """A model the search produced: how much it loses (validation: for choosing; test: reported) and its size."""

    label: str
    size_bytes: int
    val_drop: float = 0.0
    val_upper: float = 0.0
    test_drop: float = 0.0
    test_ci: tuple[float, float] = (0.0, 0.0)
    test_n: int = 0
    notes: list[str] = field(default_factory=list)
    eligible: bool = True
    model: Any = None  # the QuantizedModel (None for FP32)
    artifact: str | None = None

    @property
    def is_fp32(self) -> bool:
        return self.label == "fp32"

    def public(self) -> dict[str, Any]:
        """JSON-friendly fields (the model object left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}


@dataclass(frozen=True)
class Deployment:
    """One candidate timed on one engine at one batch size."""

    label: str
    engine: str
    variant: str
    batch: int
    median_ms: float
    ci_low_ms: float | None
    ci_high_ms: float | None
    p90_ms: float
    other_cpu_share: float | None = None
    round_medians_ms: tuple[float, ...] = ()  # one per timing round (fresh processes), when several

    def overlaps(self, other: Deployment) -> bool:
        """True when no measurable difference separates the two medians (THE test: ``medians_differ``)."""
        from quantbench.machine_load import medians_differ

        def ci(d: Deployment) -> dict[str, float | None]:
            return {"median_ci_low_ms": d.ci_low_ms, "median_ci_high_ms": d.ci_high_ms}

        return not medians_differ(ci(self), ci(other))


def merge_rounds(rounds: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One record per (engine, variant, batch) from several timing rounds, each run in fresh processes.

    Why: on a shared VM the same deployment's median moves by tens of percent between processes minutes
    apart (ResNet-20 OpenVINO INT8: 1.15 to 1.83 ms) while each process's own interval is about 2% wide.
    The merged record is the middle round's (every number in it was measured together, in one process),
    with its median's interval widened to span every round's, so "no measurable difference" accounts
    for the variation between processes; ``round_medians_ms`` keeps each round's median.

    Example:
        >>> r = lambda ms: {"engine": "ort", "variant": "int8", "batch": 1, "median_ms": ms,
        ...                 "median_ci_low_ms": ms - .1, "median_ci_high_ms": ms + .1, "other_cpu_share": 0.0,
        ...                 "latency": {}}
        >>> m = merge_rounds([[r(1.0)], [r(1.6)], [r(1.2)]])[0]
        >>> m["median_ms"], m["median_ci_low_ms"], m["median_ci_high_ms"], m["round_medians_ms"]
        (1.2, 0.9, 1.7000000000000002, [1.0, 1.6, 1.2])
    """
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for records in rounds:
        for r in records:
            groups.setdefault((r["engine"], r["variant"], r["batch"]), []).append(r)
    merged = []
    for rs in groups.values():
        middle = sorted(rs, key=lambda r: r["median_ms"])[(len(rs) - 1) // 2]
        lows = [r["median_ci_low_ms"] for r in rs if r.get("median_ci_low_ms") is not None]
        highs = [r["median_ci_high_ms"] for r in rs if r.get("median_ci_high_ms") is not None]
        shares = [r["other_cpu_share"] for r in rs if r.get("other_cpu_share") is not None]
        span = {"median_ci_low_ms": min(lows) if lows else None, "median_ci_high_ms": max(highs) if highs else None,
                "other_cpu_share": max(shares) if shares else None}
        merged.append({**middle, **span, "latency": {**middle.get("latency", {}), **span},
                       "round_medians_ms": [r["median_ms"] for r in rs]})
    return merged


def cpu_summary(env: dict[str, Any]) -> str:
    """``AMD EPYC (AVX-512 VNNI)`` / ``... (AVX2, no VNNI)``: the facts that decide INT8 kernels.

    Example:
        >>> cpu_summary({"cpu_model": "X", "cpu_flags": {"avx2": True, "avx512_vnni": False, "avx_vnni": False}})
        'X (AVX2, no VNNI)'
    """
    flags = env.get("cpu_flags") or {}
    parts = []
    if flags.get("amx_int8"):
        parts.append("AMX")
    if flags.get("avx512_vnni"):
        parts.append("AVX-512 VNNI")
    elif flags.get("avx_vnni"):
        parts.append("AVX-VNNI")
    elif flags.get("avx512f"):
        parts.append("AVX-512, no VNNI")
    elif flags.get("avx2"):
        parts.append("AVX2, no VNNI")
    model = env.get("cpu_model") or env.get("machine") or "this CPU"
    return f"{model} ({', '.join(parts)})" if parts else str(model)


def _size(n: float) -> str:
    from quantbench.report.tables import human_bytes

    return human_bytes(n)


def deployment_title(engine: str, variant: str) -> str:
    """``ONNX Runtime INT8``, ``PyTorch eager FP32``, ``PyTorch INT8`` (the variant said once).

    Example:
        >>> deployment_title("torch-int8", "int8"), deployment_title("openvino", "fp32")
        ('PyTorch INT8', 'OpenVINO FP32')
    """
    title, v = engine_title(engine), variant.upper()
    return title if v in title.upper().split() else f"{title} {v}"


def _name(d: Deployment) -> str:
    return deployment_title(d.engine, d.variant) + ("" if d.label == "fp32" else f" {d.label}")


def _drop(c: Candidate) -> str:
    """The top-1 change vs FP32 (negative: a loss) with its paired interval."""
    return f"top-1 {-c.test_drop:+.1f} [{-c.test_ci[1]:+.1f}, {-c.test_ci[0]:+.1f}] points vs FP32"


def speedup_range(fast: Deployment, ref: Deployment) -> tuple[float, float] | None:
    """Slowest and fastest ratio ``ref / fast`` over the timing rounds (None with one round).

    Example:
        >>> d = lambda ms: Deployment("x", "e", "int8", 1, ms[1], None, None, ms[1], None, tuple(ms))
        >>> speedup_range(d([1.0, 1.2]), d([3.0, 3.3]))
        (2.5, 3.3)
    """
    if len(fast.round_medians_ms) < 2 or len(ref.round_medians_ms) < 2:
        return None
    return (min(ref.round_medians_ms) / max(fast.round_medians_ms),
            max(ref.round_medians_ms) / min(fast.round_medians_ms))


def compose_answer(candidates: Sequence[Candidate], deployments: Sequence[Deployment], *, machine: str, batch: int,
                   max_drop: float, busy: Sequence[float] = ()) -> dict[str, Any]:
    """The answer in words: ``{"answer": [...], "avoid": [...], "choice": {...} | None}``.

    ``candidates`` include FP32 (label ``fp32``); ``deployments`` are every timed cell; ``busy`` are the
    other-process CPU shares above the busy threshold (empty on a quiet machine).
    """
    by_label = {c.label: c for c in candidates}
    fp32 = by_label.get("fp32")
    if fp32 is None:
        raise QuantbenchError("recommend: no FP32 reference among the candidates")
    at = [d for d in deployments if d.batch == batch and d.label in by_label]
    fp32_deps = sorted((d for d in at if d.label == "fp32"), key=lambda d: d.median_ms)
    quant = [c for c in candidates if not c.is_fp32]
    eligible = [c for c in quant if c.eligible]
    answer: list[str] = []
    avoid: list[str] = []
    images = f"{fp32.test_n:,} evaluation images never used for choosing"
    for c in quant:
        if not c.eligible:
            avoid.append(f"{c.label}: drops {c.val_drop:.1f} points on the validation images (upper bound "
                         f"{c.val_upper:.1f}), over the {max_drop:g}-point limit; on the evaluation images "
                         f"{_drop(c)}.")
    if not fp32_deps:
        raise QuantbenchError(f"recommend: no engine timed FP32 at batch {batch}; nothing to compare with")
    best_fp32 = fp32_deps[0]
    choice = None
    if not eligible:
        answer.append(f"On {machine}: no quantized model stayed within {max_drop:g} points of FP32 on the validation "
                      f"images; deploy FP32 ({_name(best_fp32)}, {best_fp32.median_ms:.3g} ms at batch {batch}) "
                      "or allow a larger --max-drop.")
        choice = {"label": "fp32", "engine": best_fp32.engine, "variant": "fp32", "batch": batch}
        return {"answer": answer, "avoid": avoid, "choice": choice}
    quant_deps = sorted((d for d in at if d.label in {c.label for c in eligible}), key=lambda d: d.median_ms)
    smallest = min(eligible, key=lambda c: (c.size_bytes, c.val_upper))
    if busy:
        c = smallest
        answer.append(f"On {machine}: {c.label}: {_drop(c)} on {images}, {fp32.size_bytes / c.size_bytes:.1f}x "
                      f"smaller ({_size(c.size_bytes)} vs {_size(fp32.size_bytes)}). No speed verdict: other "
                      f"processes used up to {100 * max(busy):.0f}% of the CPU while timing; rerun on a quiet machine.")
        choice = {"label": c.label, "engine": None, "variant": None, "batch": batch, "busy": True}
        return {"answer": answer, "avoid": avoid, "choice": choice}
    if not quant_deps:
        c = smallest
        answer.append(f"On {machine}: {c.label}: {_drop(c)} on {images}, {fp32.size_bytes / c.size_bytes:.1f}x smaller; "
                      f"no engine here could deploy it, so its speed is unknown (see the skipped cells).")
        return {"answer": answer, "avoid": avoid, "choice": {"label": c.label, "engine": None, "variant": None,
                                                             "batch": batch}}
    # deployments within the timing noise of the fastest are a tie: the one that loses least on the
    # validation images wins it (then the smaller), so noise cannot flip the answer between equals
    tied = [d for d in quant_deps if d.overlaps(quant_deps[0])]
    fastest = min(tied, key=lambda d: (by_label[d.label].val_upper, by_label[d.label].size_bytes, d.median_ms))
    c = by_label[fastest.label]
    ratio = best_fp32.median_ms / fastest.median_ms
    if fastest.overlaps(best_fp32) or ratio < MIN_SPEEDUP:
        s = smallest
        faster = "" if ratio <= 1.0 else (f" (its {ratio:.2f}x is within the timing noise)" if fastest.overlaps(best_fp32)
                                          else f" (its {ratio:.2f}x is below the {MIN_SPEEDUP:.2f}x that separate "
                                               "runs of the same command vary by)")
        answer.append(f"On {machine}: no quantized deployment is measurably faster than the fastest FP32 "
                      f"({_name(best_fp32)}, {best_fp32.median_ms:.3g} ms at batch {batch}){faster}. Choose by size: "
                      f"{s.label}: {_drop(s)} on {images}, {fp32.size_bytes / s.size_bytes:.1f}x smaller "
                      f"({_size(s.size_bytes)} vs {_size(fp32.size_bytes)}).")
        choice = {"label": s.label, "engine": None, "variant": None, "batch": batch}
    else:
        span = speedup_range(fastest, best_fp32)
        spread = f" ({span[0]:.2f}-{span[1]:.2f}x across {len(fastest.round_medians_ms)} rounds)" if span else ""
        answer.append(f"On {machine}: {_name(fastest)}: {_drop(c)} on {images}, {ratio:.2f}x the fastest FP32 "
                      f"deployment ({_name(best_fp32)}) at batch {batch}{spread} ({fastest.median_ms:.3g} vs "
                      f"{best_fp32.median_ms:.3g} ms), {fp32.size_bytes / c.size_bytes:.1f}x smaller "
                      f"({_size(c.size_bytes)} vs {_size(fp32.size_bytes)}).")
        choice = {"label": c.label, "engine": fastest.engine, "variant": fastest.variant, "batch": batch,
                  "speedup_vs_best_fp32": ratio, "speedup_range": list(span) if span else None}
    for note in c.notes:
        answer.append(note)
    fp32_by_engine = {d.engine: d for d in fp32_deps}
    from quantbench.experiments.bench import FP32_OF

    seen: set[str] = set()
    for d in sorted(at, key=lambda d: d.median_ms, reverse=True):
        if d.label == "fp32" or d.engine in seen:
            continue
        ref = fp32_by_engine.get(FP32_OF.get(d.engine, d.engine))
        if ref is not None and d.median_ms > ref.median_ms and not d.overlaps(ref):
            seen.add(d.engine)
            avoid.append(f"{engine_title(d.engine)} INT8 ({d.label}) is slower than its own FP32 here: "
                         f"{d.median_ms:.3g} vs {ref.median_ms:.3g} ms at batch {batch}.")
    return {"answer": answer, "avoid": avoid, "choice": choice}


def non_dominated(costs: Sequence[tuple[float, ...]]) -> list[int]:
    """Indices of points no other point beats on every cost (all lower-is-better) and strictly on one.

    Example:
        >>> non_dominated([(0.1, 300.0, 2.0), (0.5, 100.0, 1.0), (0.6, 120.0, 1.5)])
        [0, 1]
    """
    def beats(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    return [i for i, p in enumerate(costs) if not any(beats(q, p) for j, q in enumerate(costs) if j != i)]


def _ms(d: Deployment) -> str:
    if d.ci_low_ms is None or d.ci_high_ms is None:
        return f"{d.median_ms:.3g}"
    return f"{d.median_ms:.3g} [{d.ci_low_ms:.3g}, {d.ci_high_ms:.3g}]"


def pareto_rows(candidates: Sequence[Candidate], deployments: Sequence[Deployment], batches: Sequence[int]
                ) -> tuple[list[str], list[list[str]]]:
    """Every deployment (candidate x engine): drop, size, latency per batch; ``*`` marks the Pareto front
    over (evaluation drop, size, latency at the first batch)."""
    by_label = {c.label: c for c in candidates}
    cells: dict[tuple[str, str, str], dict[int, Deployment]] = {}
    for d in deployments:
        if d.label in by_label:
            cells.setdefault((d.label, d.engine, d.variant), {})[d.batch] = d
    keys = sorted(cells, key=lambda k: (k[0] != "fp32", k[0], k[1]))
    first = batches[0]
    points = [(by_label[k[0]].test_drop, float(by_label[k[0]].size_bytes),
               cells[k][first].median_ms if first in cells[k] else float("inf")) for k in keys]
    front = set(non_dominated(points))
    header = ["", "method", "engine", "drop (points, 95% CI)", "size"] + [f"ms @ batch {b} [95% CI]" for b in batches]
    body = []
    for i, k in enumerate(keys):
        c = by_label[k[0]]
        lat = [_ms(cells[k][b]) if b in cells[k] else "–" for b in batches]
        drop = "–" if c.is_fp32 else f"{c.test_drop:+.2f} [{c.test_ci[0]:+.2f}, {c.test_ci[1]:+.2f}]"
        body.append(["*" if i in front else "", k[0], deployment_title(k[1], k[2]), drop, _size(c.size_bytes), *lat])
    return header, body
