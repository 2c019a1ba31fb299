"""Engine benchmark: latency and throughput of one model on every engine x variant x batch size.

This answers "does quantization make MY model faster on MY machine, with which engine?".
Every cell is timed by :func:`~quantbench.measure.latency.measure_latency` on the engine's
own session (:func:`~quantbench.engines.base.load_session`), so what is timed is what a
user would deploy. Derived numbers, all computed from measured medians in the same run:

* ``gmacs_per_s``: MACs per batch / median time (FLOPs = 2 x MACs);
* ``fraction_of_peak``: that rate / this machine's GEMM peak at the variant's precision
  (:mod:`quantbench.measure.peaks`);
* ``speedup_vs_fp32``: the same engine's fp32 median / this median (> 1 = faster);
* ``speedup_vs_torch_fp32``: PyTorch eager fp32's median / this median (always measured:
  it is the reference everybody has).

Isolation: by default each (engine, variant) runs in a fresh process (forked from a fork server
that imported torch once: :mod:`quantbench.fresh_process`), one after the other. That gives an
honest peak RSS per engine (a process high-water mark cannot be attributed otherwise) and keeps one engine's idle thread pool from stealing cycles from the
next. ``isolate=False`` runs in this process (any ``nn.Module``; peak RSS not recorded).

INT8 deploys OUR calibrated scales: ``quantized`` (a saved ``.qbm`` model from
``quantbench quantize``) or, when absent, a W8A8 min/max PTQ calibrated on ``calib`` images
(or on seeded random images, which is enough for timing: integer kernels do not run faster
or slower for other scales; accuracy is not measured by this verb).

Example:
    >>> spec = BenchSpec(model="lenet", engines=("torch", "onnxruntime"), batch_sizes=(1, 8))  # doctest: +SKIP
    >>> result = run_bench(spec)  # doctest: +SKIP
    >>> result.records[0]["median_ms"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.experiments.records import RowKey, cost_rows, latency_rows
from quantbench.store import Result

__all__ = ["BenchResult", "BenchSpec", "bench_rows", "calibration_images", "plan_jobs", "public_record",
           "resolve", "run_bench"]

REFERENCE = ("torch", "fp32")
"""The (engine, variant) every speed-up is also measured against: PyTorch eager FP32."""

FP32_OF = {"torch-int8": "torch"}
"""Engines without an fp32 variant of their own -> the engine whose fp32 is their baseline."""


@dataclass(frozen=True)
class BenchSpec:
    """What to benchmark (stored with the results).

    Attributes:
        model: a model source (zoo name, ``file.py:factory``, ``.onnx``, ``.pt2``, ...).
        checkpoint: weights to load (None: as built; speed does not depend on the values).
        quantized: a ``.qbm`` file (or a folder holding one) whose scales ``int8`` deploys.
        engines: engine names, or ``("all",)`` for every installed engine.
        variants: variants to run (empty: every variant each engine supports here).
        batch_sizes: images per call.
        input_shape: (C, H, W) (None: the model's own).
        threads: intra-op threads for every engine (None: all logical cores).
        num_classes / hyper: model arguments (None/empty: the model's defaults).
        calib: data spec whose images calibrate ``int8`` when ``quantized`` is None (None: seeded
            random images, enough for timing: integer kernels run the same for any scales).
        calib_size: calibration images (real or random).
        method: the PTQ method that calibrates ``int8`` when ``quantized`` is None.
        normalize: normalisation of ``calib`` images.
        warmup / min_iters / min_time_s: :func:`measure_latency` protocol.
        isolate: one fresh process per (engine, variant).
        reference: also time PyTorch eager fp32 (the reference of ``speedup_vs_torch_fp32``).
    """

    model: str
    checkpoint: str | None = None
    quantized: str | None = None
    engines: tuple[str, ...] = ("all",)
    variants: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    input_shape: tuple[int, int, int] | None = None
    threads: int | None = None
    num_classes: int | None = None
    hyper: dict[str, Any] = field(default_factory=dict)
    calib: str | None = None
    calib_size: int = 32
    method: str = "w8a8:minmax"
    normalize: str = "auto"
    warmup: int = 5
    min_iters: int = 10
    min_time_s: float = 1.0
    isolate: bool = True
    reference: bool = True


@dataclass
class BenchResult:
    """Records (one per engine x variant x batch), skipped cells with reasons, machine peaks."""

    model: str
    input_shape: tuple[int, int, int]
    per_image_macs: int
    records: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    peaks: dict[str, Any]
    quantized_from: str
    params: int = 0
    fp32_size_bytes: int = 0

    def findings(self) -> list[str]:
        from quantbench.experiments.bench_findings import bench_findings

        return bench_findings(self.records)


# ----------------------------------------------------------------------------- validation and plan


def _check_batches(batch_sizes: tuple[int, ...]) -> tuple[int, ...]:
    if not batch_sizes:
        raise QuantbenchError("bench: --batch-sizes needs at least one batch size")
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise QuantbenchError(f"bench: batch size must be an integer >= 1, got {b!r}")
    return tuple(dict.fromkeys(batch_sizes))


def plan_jobs(engines: tuple[str, ...], variants: tuple[str, ...], reference: bool = True
              ) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """(engine, variant) pairs to run, and the cells skipped with the reason.

    An engine named explicitly must exist and be installed (else a one-line error); with
    ``all`` the missing ones are skipped with the reason. PyTorch eager fp32 runs first unless
    ``reference`` is False: it is the reference of ``speedup_vs_torch_fp32`` (a caller that timed it
    already, like ``recommend`` timing one candidate after another, turns it off).
    """
    from quantbench.engines.base import ENGINES, VARIANTS, _register_builtin

    _register_builtin()
    for v in variants:
        if v not in VARIANTS:
            raise QuantbenchError(f"bench: unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    explicit = tuple(e for e in engines if e != "all")
    names = ENGINES.names() if "all" in engines or not engines else list(dict.fromkeys(explicit))
    jobs: list[tuple[str, str]] = [REFERENCE] if reference else []
    skipped: list[dict[str, str]] = []
    for name in names:
        cls = ENGINES.get(name)  # unknown names: QuantbenchError listing the known ones
        ok, reason = cls.available()
        if not ok:
            if name in explicit:
                raise QuantbenchError(f"bench: engine {name!r} is not installed: {reason}")
            skipped.append({"engine": name, "variant": "*", "reason": reason})
            continue
        wanted = variants or cls.variants
        offered = [v for v in wanted if v in cls.variants]
        if name in explicit and variants and not offered:
            raise QuantbenchError(f"bench: engine {name!r} offers none of the variants {', '.join(variants)} "
                                  f"(it offers: {', '.join(cls.variants)})")  # fmt: skip
        for v in offered:
            vok, vreason = cls.supports(v)
            if not vok:
                skipped.append({"engine": name, "variant": v, "reason": vreason})
            elif (name, v) not in jobs:
                jobs.append((name, v))
    return jobs, skipped


def with_qbm_shape(spec: BenchSpec) -> BenchSpec:
    """``spec`` with the input shape (and classes) its ``.qbm`` recorded, when it names none itself.

    A model that fixes no input size (the user's own ``nn.Module``) was quantized at a known size, and the
    ``.qbm`` header says which: deploying those scales needs no ``--input-shape`` repeated by hand.
    """
    if spec.input_shape is not None or not spec.quantized:
        return spec
    from quantbench.quant.save import read_quantized_meta

    model = read_quantized_meta(_find_qbm(spec.quantized)).get("model", {})
    shape = model.get("input_shape") or []
    if len(shape) != 3:
        return spec
    classes = (model.get("kwargs") or {}).get("num_classes")
    return dataclasses.replace(spec, input_shape=tuple(int(v) for v in shape),
                               num_classes=spec.num_classes or (int(classes) if classes else None))


def resolve(spec: BenchSpec, check: bool = True) -> Any:
    """The float model of ``spec`` and its input shape (a one-line error when no shape is known)."""
    from quantbench.models.sources import default_input_shape, resolve_model

    loaded = resolve_model(spec.model, hyper=spec.hyper, checkpoint=spec.checkpoint, num_classes=spec.num_classes,
                           in_channels=spec.input_shape[0] if spec.input_shape else None,
                           input_shape=spec.input_shape, check=check)
    default_input_shape(loaded, "bench")
    return loaded


def check_input_size(model: nn.Module, name: str, shape: tuple[int, int, int]) -> None:
    """One FP32 forward on a zero image; a model that cannot take ``shape`` gets a one-line error."""
    try:
        with torch.inference_mode():
            model(torch.zeros((1, *shape)))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantbenchError(
            f"bench: model {name!r} cannot take a {shape[0]}x{shape[1]}x{shape[2]} input "
            f"(--input-shape): {first}"
        ) from None


def _find_qbm(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.qbm"))
        if not found:
            raise QuantbenchError(f"{path}: no quantized model (*.qbm) in this folder; "
                                  "write one with `quantbench quantize --out DIR`")  # fmt: skip
        if len(found) > 1:
            raise QuantbenchError(f"{path}: {len(found)} quantized models here; pass one file: "
                                  + ", ".join(f.name for f in found))  # fmt: skip
        return found[0]
    if not p.exists():
        raise QuantbenchError(f"{path}: no such file (expected a .qbm written by `quantbench quantize`)")
    return p


def calibration_images(calib: str | None, n: int, shape: tuple[int, int, int], normalize: str = "auto",
                       seed: int = 0) -> tuple[Any, str]:
    """Images that calibrate an INT8 deployment, and how to describe them.

    ``calib`` is a data spec (resized to the model's H x W), or None / ``"random"`` for seeded random
    images - enough for timing (integer kernels run the same for any scales), never for accuracy.
    """
    if calib and calib != "random":
        from quantbench.data import open_dataset, subset

        ds = open_dataset(calib, normalize=normalize, resize=(shape[1], shape[2]))
        if tuple(ds.input_shape) != tuple(shape):
            raise QuantbenchError(f"{calib}: images are {ds.input_shape}, the model takes {shape}")
        if len(ds) < n:
            raise QuantbenchError(f"{calib}: {len(ds)} images, fewer than the {n} asked for calibration")
        return subset(ds, n, seed=seed), f"{n} images of {calib}"
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=gen)
    return (x, torch.zeros(len(x), dtype=torch.long)), f"{n} seeded random images (timing only)"


def _quantized_model(spec: BenchSpec, loaded: Any, shape: tuple[int, int, int], workdir: Path,
                     quantized: Any = None) -> tuple[Path, str]:
    """A saved ``.qbm`` whose scales the int8 variants deploy, and where it came from."""
    from quantbench.quant.save import load_quantized, read_quantized_meta, save_quantized

    kwargs = {"hyper": dict(spec.hyper), "num_classes": spec.num_classes, "in_channels": shape[0],
              "input_shape": list(shape) if spec.input_shape else None}
    if quantized is not None:  # an in-memory QuantizedModel (Python API): deployed as it is
        path = workdir / "model_int8.qbm"
        save_quantized(quantized, path, model_name=spec.model, model_kwargs=kwargs, input_shape=shape)
        return path, "the quantized model passed in"
    if spec.quantized:
        path = _find_qbm(spec.quantized)
        meta = read_quantized_meta(path)
        saved_shape = tuple(meta.get("model", {}).get("input_shape") or ())
        if saved_shape and saved_shape[0] != shape[0]:
            raise QuantbenchError(f"{path}: was quantized for {saved_shape[0]}-channel input, not {shape[0]}")
        load_quantized(path, copy.deepcopy(loaded.module))  # validates the file now, not in a worker
        return path, f"{path}"
    from quantbench.quant.ptq import parse_method, quantize_ptq

    data, what = calibration_images(spec.calib, spec.calib_size, shape, spec.normalize)
    cfg = parse_method(spec.method, calib_size=spec.calib_size, calib_batch_size=min(32, spec.calib_size))
    source = f"{cfg.label()} PTQ calibrated on {what}"
    qm = quantize_ptq(loaded.module, cfg, data)
    path = workdir / "model_int8.qbm"
    save_quantized(qm, path, model_name=spec.model, model_kwargs=kwargs, input_shape=shape, extra={"source": source})
    return path, source


# ----------------------------------------------------------------------------- one job (maybe in a child)


def bench_job(job: dict[str, Any]) -> dict[str, Any]:
    """Deploy one (engine, variant) and time every batch size; returns plain data (picklable).

    Runs in a fresh process when isolated: it rebuilds the float model from the zoo and
    loads the ``.qbm`` itself, so nothing but file paths crosses the process boundary.
    Errors come back as ``{"error": "..."}``: one broken engine must not lose the others.
    """
    from quantbench.engines.base import Deployable, load_session
    from quantbench.measure.latency import measure_latency, peak_rss_bytes

    try:
        torch.set_num_threads(job["threads"])
        model = job.get("model_obj")
        if model is None:
            model = resolve(job["spec"], check=False).module
        qm = job.get("quantized_obj")  # an in-memory QuantizedModel, deployed as it is
        if job["variant"] == "int8" and qm is None:
            from quantbench.quant.save import load_quantized

            qm = load_quantized(job["qbm"], copy.deepcopy(model))
        dep = Deployable(model, qm, tuple(job["input_shape"]), name=job["model"])
        rss_loaded = None
        with tempfile.TemporaryDirectory(prefix="quantbench-bench-") as tmp:
            session = load_session(job["engine"], dep, job["variant"], threads=job["threads"], workdir=tmp)
            info = {k: v for k, v in session.info.items() if isinstance(v, (str, int, float, bool, type(None)))}
            rss_loaded = peak_rss_bytes()
            lats, events = [], []
            for b in job["batch_sizes"]:
                lat = measure_latency(session.runner(b), batch_size=b, threads=job["threads"], warmup=job["warmup"],
                                      min_iters=job["min_iters"], min_time_s=job["min_time_s"])
                lats.append(lat.as_dict())
                ev = getattr(session, "event_ms", None)  # GPU engines: device-side time per call
                n = lat.iterations
                events.append(float(sorted(ev[-n:])[len(ev[-n:]) // 2]) if ev and len(ev) >= n else None)
            del session
        return {"engine": job["engine"], "variant": job["variant"], "info": info, "latencies": lats, "events": events,
                "peak_rss_bytes": peak_rss_bytes() if job["isolated"] else None,
                "rss_after_load_bytes": rss_loaded if job["isolated"] else None}
    except QuantbenchError as exc:
        return {"engine": job["engine"], "variant": job["variant"], "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported as a skipped cell with the reason
        return {"engine": job["engine"], "variant": job["variant"], "error": f"{type(exc).__name__}: {exc}"}


def _run_isolated(job: dict[str, Any]) -> dict[str, Any]:
    from quantbench.fresh_process import run_in_fresh_process

    try:
        return run_in_fresh_process(bench_job, job)
    except Exception as exc:  # noqa: BLE001 - a crashed worker (e.g. killed for memory)
        return {"engine": job["engine"], "variant": job["variant"],
                "error": f"worker process failed: {type(exc).__name__}: {exc}"}


# ----------------------------------------------------------------------------- the benchmark


def run_bench(spec: BenchSpec, *, model: nn.Module | None = None, quantized: Any = None,
              log: Callable[[str], None] | None = None, peaks: bool = True) -> BenchResult:
    """Benchmark ``spec.model`` (or the given in-memory ``model`` / ``quantized``) on the planned engines.

    Args:
        spec: what to run.
        model: a float ``nn.Module`` to use instead of building ``spec.model`` (forces ``isolate=False``;
            ``spec.model`` is then only its label; ``spec.input_shape`` or a ``model.input_shape``
            attribute gives the input).
        quantized: a :class:`~quantbench.quant.prepare.QuantizedModel` whose scales ``int8`` deploys as
            they are (no re-quantization).
        log: progress lines (default: stderr).
        peaks: also measure this machine's GEMM peaks (for ``fraction_of_peak``).

    Raises:
        QuantbenchError: unknown/uninstalled engine named explicitly, unknown variant, batch
            size < 1, an input size the model cannot take, a bad ``quantized`` file.
    """
    from quantbench.measure.macs import count_macs
    from quantbench.measure.params import count_parameters
    from quantbench.models.sources import LoadedModel, default_input_shape

    log = log or (lambda msg: print(msg, file=sys.stderr))
    batches = _check_batches(tuple(spec.batch_sizes))
    threads = spec.threads if spec.threads is not None else (os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise QuantbenchError(f"bench: --threads must be an integer >= 1, got {spec.threads!r}")
    jobs, skipped = plan_jobs(tuple(spec.engines), tuple(spec.variants), spec.reference)
    custom = model is not None
    if custom:
        shape_attr = spec.input_shape or getattr(model, "input_shape", None)
        loaded = LoadedModel(model.eval(), spec.model, "module", tuple(shape_attr) if shape_attr else None)
    else:
        spec = with_qbm_shape(spec)
        loaded = resolve(spec)
    shape = default_input_shape(loaded, "bench")
    model = loaded.module
    check_input_size(model, spec.model, shape)
    isolate = spec.isolate and not custom and quantized is None
    macs = count_macs(model, shape, batch_size=1).per_image_macs
    with tempfile.TemporaryDirectory(prefix="quantbench-bench-") as tmp:
        qbm, qsource = None, "no int8 variant requested"
        if any(v == "int8" for _, v in jobs) or spec.quantized:  # a given .qbm is always validated
            qbm, qsource = _quantized_model(spec, loaded, shape, Path(tmp), quantized)
        machine = {}
        if peaks:
            log(f"bench: measuring this machine's GEMM peaks ({threads} threads)")
            from quantbench.measure.peaks import machine_peaks

            machine = {k: v.as_dict() for k, v in machine_peaks(threads).items()}
        raw: list[dict[str, Any]] = []
        for i, (engine, variant) in enumerate(jobs, 1):
            log(f"bench: [{i}/{len(jobs)}] {spec.model} {engine} {variant} batch {','.join(map(str, batches))}")
            job = {"engine": engine, "variant": variant, "model": spec.model, "spec": spec,
                   "qbm": str(qbm) if qbm else None, "input_shape": list(shape),
                   "batch_sizes": list(batches), "threads": threads, "warmup": spec.warmup,
                   "min_iters": spec.min_iters, "min_time_s": spec.min_time_s, "isolated": isolate}
            if isolate:
                out = _run_isolated(job)
            else:
                out = bench_job({**job, "model_obj": model, "quantized_obj": quantized})
            if "error" in out:
                out["error"] = " ".join(str(out["error"]).split())  # one line, whatever the engine raised
                log(f"bench:   skipped: {out['error']}")
                skipped.append({"engine": engine, "variant": variant, "reason": out["error"]})
            else:
                raw.append(out)
    records = [{"model": spec.model, **r} for r in _derive(raw, macs, machine)]
    from quantbench.measure.size import save_fp32

    with tempfile.TemporaryDirectory() as tmp:
        fp32_bytes = save_fp32(model, Path(tmp) / "model_fp32.pt")
    return BenchResult(spec.model, shape, macs, records, skipped, machine, qsource,
                       params=count_parameters(model), fp32_size_bytes=fp32_bytes)


def public_record(r: dict[str, Any]) -> dict[str, Any]:
    """A record without the raw per-call samples (what ``--json`` prints)."""
    out = {k: v for k, v in r.items() if k not in ("latency", "info")}
    out["precision"] = r.get("info", {}).get("precision")
    out["version"] = r.get("info", {}).get("version")
    return out


def _derive(raw: list[dict[str, Any]], per_image_macs: int, peaks: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat record per (engine, variant, batch) with every derived ratio."""
    from quantbench.measure.peaks import peak_precision

    median = {(r["engine"], r["variant"], lat["batch_size"]): lat["median_ms"] for r in raw for lat in r["latencies"]}
    records = []
    for r in raw:
        for i, lat in enumerate(r["latencies"]):
            b = lat["batch_size"]
            event_ms = (r.get("events") or [None] * len(r["latencies"]))[i]
            med = lat["median_ms"]
            macs_batch = per_image_macs * b
            rate = macs_batch / (med / 1000.0) / 1e9 if med > 0 else None
            prec = peak_precision(r["variant"])
            # the measured peaks are this machine's CPU GEMM rates: they say nothing about a GPU
            peak = None if "cuda" in r["engine"] else peaks.get(prec, {}).get("gmacs_per_s")
            same = median.get((FP32_OF.get(r["engine"], r["engine"]), "fp32", b))
            ref = median.get((*REFERENCE, b))
            records.append({
                "engine": r["engine"], "variant": r["variant"], "batch": b,
                "median_ms": med, "median_ci_low_ms": lat.get("median_ci_low_ms"),
                "median_ci_high_ms": lat.get("median_ci_high_ms"), "other_cpu_share": lat.get("other_cpu_share"),
                "p90_ms": lat["p90_ms"], "mean_ms": lat["mean_ms"], "min_ms": lat["min_ms"],
                "iterations": lat["iterations"], "warmup": lat["warmup"], "threads": lat["threads"],
                "throughput_ips": lat["throughput_ips"], "macs_batch": macs_batch, "gmacs_per_s": rate,
                "peak_precision": prec, "fraction_of_peak": rate / peak if rate and peak else None,
                "speedup_vs_fp32": same / med if same and med > 0 else None,
                "speedup_vs_torch_fp32": ref / med if ref and med > 0 else None,
                "peak_rss_bytes": r["peak_rss_bytes"], "model_bytes": r["info"].get("model_bytes"),
                "info": r["info"], "latency": lat, "cuda_event_median_ms": event_ms,
            })  # fmt: skip
    return records


# ----------------------------------------------------------------------------- reading the numbers


def bench_rows(result: BenchResult, data_label: str) -> list[Result]:
    """Store rows: latency/throughput/GMAC/s/ratios per cell, RSS and file size per engine, MACs, peaks."""
    from quantbench.measure.latency import LatencyResult

    rows: list[Result] = []
    fp32_key = RowKey(result.model, data_label, "fp32", "torch")

    class _Macs:
        per_image_macs = result.per_image_macs

    rows += cost_rows(fp32_key, params=result.params, size_bytes=result.fp32_size_bytes,
                      size_file="model_fp32.pt", macs=_Macs(),
                      batch_sizes=tuple(sorted({r["batch"] for r in result.records})))
    seen_engine: set[tuple[str, str]] = set()
    for r in result.records:
        key = RowKey(result.model, data_label, r["variant"], r["engine"])
        lat = LatencyResult(**{**r["latency"], "throughput_ips": r["latency"]["throughput_ips"] or float("inf")})
        rows += latency_rows(key, lat)
        b = r["batch"]
        if r["gmacs_per_s"] is not None:
            rows.append(key.row("gmacs_per_s", r["gmacs_per_s"], "GMAC/s", b, convention="FLOPs = 2 x MACs"))
        if r.get("cuda_event_median_ms") is not None:
            rows.append(key.row("cuda_event_median_ms", r["cuda_event_median_ms"], "ms", b,
                                note="GPU-side time between CUDA events around the forward pass"))
        if r["fraction_of_peak"] is not None:
            rows.append(key.row("fraction_of_peak", r["fraction_of_peak"], "ratio", b,
                                peak=r["peak_precision"]))
        if r["speedup_vs_fp32"] is not None:
            rows.append(key.row("speedup_vs_fp32", r["speedup_vs_fp32"], "x", b,
                                reference=f"{FP32_OF.get(r['engine'], r['engine'])} fp32"))
        if r["speedup_vs_torch_fp32"] is not None:
            rows.append(key.row("speedup_vs_torch_fp32", r["speedup_vs_torch_fp32"], "x", b,
                                reference="torch fp32"))
        if (r["engine"], r["variant"]) not in seen_engine:
            seen_engine.add((r["engine"], r["variant"]))
            if r["peak_rss_bytes"] is not None:
                rows.append(key.row("peak_rss_bytes", r["peak_rss_bytes"], "bytes",
                                    note="high-water mark of a fresh process that loaded the model and ran "
                                         "every batch size on this engine"))  # fmt: skip
            if r["model_bytes"] is not None:
                rows.append(key.row("deployed_bytes", r["model_bytes"], "bytes",
                                    file=Path(str(r["info"].get("model_path", ""))).name))
    for prec, p in result.peaks.items():
        rows.append(RowKey(result.model, data_label, prec, "machine").row(
            "peak_gmacs_per_s", p["gmacs_per_s"], "GMAC/s", source=p["source"], threads=p["threads"]))
    return rows
