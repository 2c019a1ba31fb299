"""Device bundles (measure on hardware that cannot run quantbench) and importing their results.

``build_bundle`` writes a folder (and a .zip) holding, for one model and each scheme: an ONNX
file (fp32; ONNX Runtime's dynamic quantization; static INT8 with OUR calibrated scales) and,
where litert-torch is installed, LiteRT ``.tflite`` files of the same schemes (fp32; LiteRT's
dynamic range; int8 with the same scales), one per batch size because a converted graph has a
fixed batch. Beside them: seeded sample inputs, the outputs each model gives on them here, a
manifest with SHA-256 checksums and MACs, and ``run_bundle.py`` (:mod:`quantbench.bundle_runner`:
Python 3 + numpy + onnxruntime; ai-edge-litert or tflite-runtime for the ``.tflite`` files where
installed). ``import_results`` stores what the runner measured on a device under that device's
name, per engine, with the estimate of a device profile (MACs / rate) beside each measurement so
its error is visible.

Example:
    >>> path = build_bundle("resnet20", schemes=("fp32", "dynamic", "w8a8"), out_dir="bundle")  # doctest: +SKIP
    >>> import_results("results.json", store_path="runs/quantbench.db")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantbench.bundle_runner import BUNDLE_FORMAT, RESULTS_FORMAT, sha256
from quantbench.config import option
from quantbench.errors import QuantbenchError
from quantbench.experiments.options import ModelSource, Normalize
from quantbench.progress import bar
from quantbench.splitting.latency import PROFILES

__all__ = ["DEVICE_PROFILES", "FORMATS", "BundleConfig", "build_bundle", "import_results"]

FORMATS = ("onnx", "tflite")
"""Model file formats a bundle can carry: ONNX (onnxruntime) and LiteRT flatbuffers (ai-edge-litert)."""


DEVICE_PROFILES = {name: p.gmacs for name, p in PROFILES.items()}
"""Published FP32 rates in GMAC/s (GFLOPS / 2; :data:`~quantbench.splitting.latency.PROFILES`)."""


@dataclass(frozen=True)
class BundleConfig(Normalize, ModelSource):
    """``quantbench bundle``: what goes into a device bundle (flags and the API share it)."""

    out: str | None = option(None, "new folder for the bundle (DIR.zip is written too)", metavar="DIR")
    variants: tuple[str, ...] = option(("fp32", "dynamic", "int8"), "precisions to bundle: fp32, dynamic (the "
                                       "runtime's own), int8 (our scales)", metavar="LIST",
                                       choices=("fp32", "dynamic", "int8"))
    method: str = option("w8a8:mse", "without --quantized: the PTQ method that makes int8")
    quantized: str | None = option(None, "a .qbm whose int8 model is bundled as it is (e.g. AdaRound or QAT)",
                                   metavar="QBM")
    calib: str | None = option(None, "images that calibrate int8 and feed the output check (a data spec, or "
                               "random: seeded random images, timing only)", metavar="SPEC|random")
    calib_size: int = option(64, "calibration images", metavar="N", ge=1)
    batch_sizes: tuple[int, ...] = option((1, 8), "batch sizes the device runner times", metavar="B1,B2", ge=1)
    formats: tuple[str, ...] = option((), "onnx,tflite (default: onnx, plus tflite where litert-torch is installed)",
                                      metavar="LIST", choices=FORMATS)
    no_zip: bool = option(False, "do not write DIR.zip")

    def check(self) -> None:
        if not self.out:
            raise QuantbenchError("bundle: --out DIR is required (a new folder)")


def build_bundle(model: str, *, checkpoint: str | None = None, hyper: dict[str, Any] | None = None,
                 input_shape: tuple[int, int, int] | None = None,
                 variants: tuple[str, ...] = ("fp32", "dynamic", "int8"), method: str = "w8a8:mse",
                 quantized: Any = None, calib: str | None = None, calib_size: int = 64, normalize: str = "auto",
                 batch_sizes: tuple[int, ...] = (1, 8), n_samples: int = 8, out_dir: str | Path,
                 make_zip: bool = True, formats: tuple[str, ...] | None = None,
                 log: Any = None, progress: bool = False) -> Path:
    """Write a self-contained bundle folder for ``model`` (any model source; see the module docstring).

    ``variants``: fp32, dynamic (the runtime's own dynamic-range quantization) and int8 (OUR scales).
    ``int8`` comes from ``quantized`` (a ``.qbm`` path or a QuantizedModel: an AdaRound or QAT model
    deploys as it is) or is calibrated here with ``method`` on ``calib`` images; seeded random
    calibration (timing only) must be asked for explicitly with ``calib="random"``.
    ``formats``: a subset of :data:`FORMATS`; None means ONNX, plus ``tflite`` where the LiteRT
    engine (litert-torch and ai-edge-litert) is installed.
    ``progress``: bars on stderr for the int8 calibration and for each file built and checked (a
    LiteRT conversion takes tens of seconds); ``log`` gets the one-off notes.

    Raises:
        QuantbenchError: a bad variant/method/batch size, int8 without calibration, an existing
            non-empty ``out_dir``, or what loading the model or data raises.
    """
    import onnxruntime as ort

    from quantbench import __version__
    from quantbench.engines.base import Deployable
    from quantbench.engines.onnxruntime_engine import build_onnx
    from quantbench.experiments.bench import calibration_images, check_input_size
    from quantbench.measure.macs import count_macs
    from quantbench.models.sources import default_input_shape, resolve_model
    from quantbench.quant.ptq import parse_method, quantize_ptq

    log = log or (lambda m: None)
    bad = [v for v in variants if v not in ("fp32", "dynamic", "int8")]
    if bad or not variants:
        raise QuantbenchError(f"bundle: --variants {','.join(variants)!r}: expected a comma list of fp32, dynamic, int8")
    if any(b < 1 for b in batch_sizes):
        raise QuantbenchError(f"bundle: batch sizes must be >= 1, got {batch_sizes}")
    formats = _resolve_formats(formats)
    qm = None
    if "int8" in variants:
        if quantized is not None:
            qm, method = _load_int8(quantized)
        else:
            ptq = parse_method(method, calib_size=calib_size)
            w, a = ptq.plan().default.weight, ptq.plan().default.act
            if w is None or a is None or w.bits > 8 or a.bits > 8 or a.dynamic:
                raise QuantbenchError(f"bundle: method {method!r} cannot be deployed as integer ONNX; use a static "
                                      "wXaY method with X, Y <= 8 (e.g. w8a8:mse)")
            if calib is None:
                raise QuantbenchError("bundle: int8 needs calibration images: pass --calib SPEC, --quantized QBM (a "
                                      "model from `quantbench quantize`), or --calib random (timing only: its "
                                      "outputs then mean nothing)")
    loaded = resolve_model(model, hyper=hyper, checkpoint=checkpoint, input_shape=input_shape,
                           in_channels=input_shape[0] if input_shape else None)
    shape = default_input_shape(loaded, "bundle")
    float_model = loaded.module
    check_input_size(float_model, model, shape)
    macs = count_macs(float_model, shape).per_image_macs
    calib_data, _ = calibration_images(calib, calib_size + n_samples, shape, normalize)
    x_all = calib_data.tensors()[0] if hasattr(calib_data, "tensors") else calib_data[0]
    calib_x, samples = x_all[:calib_size], x_all[calib_size:calib_size + n_samples]
    origin = f"images of {calib}" if calib not in (None, "random") else "seeded random images (timing only)"
    calib_what = f"{len(calib_x)} {origin}"
    if len(samples) < 1:
        raise QuantbenchError(f"{calib}: not enough images for {calib_size} calibration and sample images")
    if "int8" in variants and qm is None:
        if calib in (None, "random"):
            log("bundle: int8 calibrated on seeded random images (timing only: its accuracy means nothing)")
        qm = quantize_ptq(float_model, parse_method(method, calib_size=len(calib_x)),
                          (calib_x, torch.zeros(len(calib_x), dtype=torch.long)), progress=progress)
        method = parse_method(method).label()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise QuantbenchError(f"{out}: folder exists and is not empty; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "samples.npy", samples.numpy().astype(np.float32))
    entries = []
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    x_np = samples.numpy().astype(np.float32)
    name = _stem(model)
    shown = bar(total=len(variants) * len(formats), desc="bundle", unit="file", enabled=progress)
    with shown, tempfile.TemporaryDirectory(prefix="quantbench-bundle-") as tmp:
        for variant in variants:
            scheme = method if variant == "int8" else variant
            dep = Deployable(float_model, qm if variant == "int8" else None, shape, name=name)
            common = {"scheme": scheme, "variant": variant, "macs": int(macs), "flops": 2 * int(macs),
                      "quantized_with": (f"{method}, calibrated on {calib_what}" if quantized is None
                                         else f"{method} from {quantized if isinstance(quantized, str) else 'memory'}")
                      if variant == "int8" else None}
            if "onnx" in formats:
                shown.set_postfix_str(f"{scheme} onnx")
                built = build_onnx(dep, variant, Path(tmp))
                dest = out / f"{name}_{variant}.onnx"
                shutil.copyfile(built, dest)
                sess = ort.InferenceSession(str(dest), opts, providers=["CPUExecutionProvider"])
                expected = sess.run(None, {sess.get_inputs()[0].name: x_np})[0]
                entries.append({**common, "format": "onnx", "engine": "onnxruntime", **_file_entry(dest),
                                **_expected_entry(out / f"expected_{variant}.npy", expected)})
                shown.update(1)
            if "tflite" in formats:
                shown.set_postfix_str(f"{scheme} tflite (batch {', '.join(map(str, sorted({1, *batch_sizes})))})")
                entries.append({**common, "format": "tflite", "engine": "litert",
                                **_tflite_files(dep, variant, variant, out, Path(tmp), batch_sizes, x_np)})
                shown.update(1)
    manifest = {"format": BUNDLE_FORMAT, "model": model, "checkpoint": Path(checkpoint).name if checkpoint
                else None, "input_shape": list(shape), "batch_sizes": list(batch_sizes),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quantbench": __version__,
                "samples": {"file": "samples.npy", "sha256": sha256(out / "samples.npy"), "count": len(samples),
                            "source": f"{len(samples)} {origin}, none of them calibration images"},
                "formats": list(formats),
                "convention": "MACs per image of conv/linear layers; FLOPs = 2 x MACs",
                "models": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(Path(__file__).with_name("bundle_runner.py"), out / "run_bundle.py")
    shutil.copyfile(Path(__file__).with_name("device_gemm.py"), out / "device_gemm.py")  # the runner imports it
    (out / "README.txt").write_text(
        f"quantbench bundle: {model} ({', '.join(e['scheme'] for e in entries if e['format'] == formats[0])}), "
        f"input {'x'.join(map(str, shape))}\n\n"
        "On the device (Python 3, then: pip install numpy onnxruntime"
        + (" ai-edge-litert   # or tflite-runtime, for the .tflite files" if "tflite" in formats else "") + "):\n"
        "    python3 run_bundle.py --device NAME [--threads N] [--batch-sizes 1,8] [--formats onnx,tflite] "
        "--out results.json\n"
        "Back where quantbench is installed:\n"
        "    quantbench import results.json\n", encoding="utf-8")
    if make_zip:
        log("bundle: zip")
        shutil.make_archive(str(out), "zip", root_dir=out)
    return out


def _stem(model: str) -> str:
    """A file-name stem for a model source (``nets/my.py:build`` -> ``my_build``)."""
    from quantbench.paths import safe_component

    base = Path(model.split(":", 1)[0]).stem if ("/" in model or model.endswith((".onnx", ".pt2"))
                                                 or ".py:" in model) else model
    tail = model.rsplit(":", 1)[1] if ":" in model and not model.startswith(("torchvision:", "timm:")) else ""
    return safe_component(f"{base}_{tail}" if tail else base, "model")


def method_of(meta: dict[str, Any], fallback: str) -> str:
    """The method label a ``.qbm`` header records (PTQ or QAT settings), or ``fallback``."""
    from quantbench.quant.ptq import PTQConfig

    extra = meta.get("extra") or {}
    try:
        if "ptq" in extra:
            return PTQConfig.from_stored(extra["ptq"]).label()
        if "qat" in extra:
            q = extra["qat"]
            return f"{q.get('scheme')}:qat"
    except (TypeError, QuantbenchError):
        pass
    return fallback


def _load_int8(quantized: Any) -> tuple[Any, str]:
    """A QuantizedModel (or a .qbm path) and its method label."""
    from quantbench.quant.save import load_quantized, read_quantized_meta

    if isinstance(quantized, (str, Path)):
        meta = read_quantized_meta(quantized)
        return load_quantized(quantized), method_of(meta, Path(quantized).stem)
    return quantized, "int8"


def _resolve_formats(formats: tuple[str, ...] | None) -> tuple[str, ...]:
    from quantbench.engines.base import get_engine

    if formats is None:
        return ("onnx", "tflite") if get_engine("litert").available()[0] else ("onnx",)
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise QuantbenchError(f"bundle: --formats {','.join(formats)!r}: expected a comma list of {', '.join(FORMATS)}")
    if "tflite" in formats:
        ok, reason = get_engine("litert").available()
        if not ok:
            raise QuantbenchError(f"bundle: --formats tflite needs the LiteRT engine: {reason}")
    return formats


def _file_entry(path: Path) -> dict[str, Any]:
    return {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size}


def _expected_entry(path: Path, expected: np.ndarray) -> dict[str, Any]:
    np.save(path, np.asarray(expected, dtype=np.float32))
    return {"expected": path.name, "expected_sha256": sha256(path)}


def _tflite_files(dep: Any, variant: str, scheme: str, out: Path, tmp: Path, batch_sizes: tuple[int, ...],
                  samples: np.ndarray) -> dict[str, Any]:
    """One ``.tflite`` file per batch size (batch 1 for the output check) and the outputs LiteRT gives here."""
    from quantbench.engines.litert_engine import load_tflite
    from quantbench.engines.litert_export import export_tflite

    files = {}
    for b in sorted({1, *batch_sizes}):
        dest = out / f"{dep.name}_{scheme}_b{b}.tflite"
        shutil.copyfile(export_tflite(dep, variant, tmp, batch=b), dest)
        files[b] = dest
    one = load_tflite(files[1], None)
    expected = np.concatenate([one(samples[i:i + 1]) for i in range(len(samples))])
    return {**_file_entry(files[1]), "batch_files": {str(b): _file_entry(f) for b, f in files.items()},
            **_expected_entry(out / f"expected_{scheme}_tflite.npy", expected)}


def _finite(v: Any, lo: float = 0.0, strict: bool = True) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > lo if strict
                                                                                              else v >= lo)


def _count(v: Any, lo: int = 1, hi: int = 1 << 20) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _name(v: Any, n: int = 200) -> bool:
    return isinstance(v, str) and 0 < len(v) <= n and v.isprintable()


def _load_results(path: str | Path) -> dict[str, Any]:
    """A device results file, validated completely before anything is stored: types, finiteness, signs, sizes."""
    p = Path(path)
    try:
        if p.stat().st_size > 64 << 20:
            raise QuantbenchError(f"{path}: {p.stat().st_size:,} bytes is too large for a device results file")
        doc = json.loads(p.read_text(encoding="utf-8"), parse_constant=lambda c: float("nan"))
    except OSError as exc:
        raise QuantbenchError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:
        raise QuantbenchError(f"{path}: not valid JSON ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise QuantbenchError(f"{path}: not a device results file (format {doc.get('format') if isinstance(doc, dict) else None!r}; "
                              f"expected {RESULTS_FORMAT!r})")
    for key in ("device", "bundle", "facts", "records", "checks"):
        if key not in doc:
            raise QuantbenchError(f"{path}: missing key {key!r}")

    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise QuantbenchError(f"{path}: {key}: expected {expected}")

    need(_name(doc["device"], 100), "device", "a printable name of at most 100 characters")
    need(isinstance(doc["facts"], dict), "facts", "a mapping")
    b = doc["bundle"]
    need(isinstance(b, dict), "bundle", "a mapping")
    need(_name(b.get("model")), "bundle.model", "the model's name")
    shape = b.get("input_shape")
    need(isinstance(shape, list) and len(shape) == 3 and all(_count(d, 1, 8192) for d in shape), "bundle.input_shape",
         "[C, H, W] of positive integers")
    need(isinstance(b.get("models"), list), "bundle.models", "a list")
    for i, m in enumerate(b["models"]):
        need(isinstance(m, dict) and _name(m.get("scheme"), 100), f"bundle.models[{i}].scheme", "a name")
        need(_count(m.get("macs"), 0, 1 << 50), f"bundle.models[{i}].macs", "a count of MACs >= 0")
    need(isinstance(doc["records"], list), "records", "a list")
    for i, r in enumerate(doc["records"]):
        key = f"records[{i}]"
        need(isinstance(r, dict), key, "a mapping")
        for k in ("scheme", "batch", "median_ms", "p90_ms"):
            if k not in r:
                raise QuantbenchError(f"{path}: {key} misses {k!r}")
        need(_name(r["scheme"], 100), f"{key}.scheme", "a name")
        need(_count(r["batch"], 1, 65536), f"{key}.batch", "an integer batch size in 1..65536")
        for k in ("median_ms", "p90_ms"):
            need(_finite(r[k]), f"{key}.{k}", "a finite time in ms > 0")
        need(r["p90_ms"] >= r["median_ms"], f"{key}.p90_ms", "a 90th percentile >= the median")
        need(r.get("engine") is None or _name(r["engine"], 50), f"{key}.engine", "an engine name")
        need(r.get("format") is None or _name(r["format"], 20), f"{key}.format", "a format name")
        for k in ("threads", "iterations"):
            need(r.get(k) is None or _count(r[k], 0, 1 << 30), f"{key}.{k}", "a count >= 0")
    need(isinstance(doc["checks"], list), "checks", "a list")
    for i, c in enumerate(doc["checks"]):
        key = f"checks[{i}]"
        need(isinstance(c, dict) and _name(c.get("scheme"), 100), f"{key}.scheme", "a name")
        need(isinstance(c.get("ok"), bool), f"{key}.ok", "true or false")
        for k in ("cosine", "top1_agreement"):
            need(c.get(k) is None or _finite(c[k], -1.0, strict=False), f"{key}.{k}", "a finite number")
        need(c.get("engine") is None or _name(c["engine"], 50), f"{key}.engine", "an engine name")
    if doc.get("ceilings") is not None:
        doc["ceilings"] = _ceilings(doc["ceilings"], need)
    return doc


def _ceilings(c: Any, need: Any) -> dict[str, Any]:
    """The runner's measured GEMM ceilings (``device_gemm.gemm_ceilings``), validated; only what is stored."""
    need(isinstance(c, dict), "ceilings", "a mapping")
    need(c.get("threads") is None or _count(c["threads"], 0, 1 << 16), "ceilings.threads", "a thread count >= 0")
    need(_name(c.get("runtime"), 100), "ceilings.runtime", "the runtime's name and version")
    out: dict[str, Any] = {"threads": c.get("threads"), "runtime": c["runtime"]}
    for prec in ("fp32", "int8"):
        p = c.get(prec)
        need(p is None or isinstance(p, dict), f"ceilings.{prec}", "a mapping or null")
        if p is not None:
            need(_finite(p.get("gmacs_per_s")), f"ceilings.{prec}.gmacs_per_s", "a finite rate > 0")
            for k in ("kernel", "op"):
                need(_name(p.get(k), 100), f"ceilings.{prec}.{k}", "a name")
        out[prec] = None if p is None else {"gmacs_per_s": float(p["gmacs_per_s"]),
                                            "gops_per_s": 2.0 * float(p["gmacs_per_s"]), "kernel": p["kernel"],
                                            "op": p["op"]}
    need(out["fp32"] is not None or out["int8"] is None, "ceilings.fp32", "a mapping when int8 is given")
    out["int8_over_fp32"] = out["int8"]["gmacs_per_s"] / out["fp32"]["gmacs_per_s"] if out["int8"] else None
    out["convention"] = "gmacs_per_s = MACs per second / 1e9; gops_per_s = 2 x gmacs_per_s (FLOP/s for fp32)"
    return out


def import_results(path: str | Path, *, store_path: str, device: str | None = None,
                   profile_gmacs: float | None = None) -> tuple[str, int]:
    """Store a device's results (one run, kind ``device``); returns (run id, rows written).

    Rows: latency (median, p90), throughput, speed-up over the same device's fp32, the device's
    measured GEMM ceilings (``device_gemm_gmacs_per_s`` per precision, where the runner measured them;
    also kept in the run's config, where the split latency model finds them by device name) and -
    when a rate is known - the estimated latency ``MACs x batch / rate`` and its error versus the
    measurement. The rate, in this order: ``profile_gmacs`` (``given``); the device's measured
    ceiling of the scheme's precision (``measured``: fp32 for ``fp32``, int8 for the quantized schemes);
    the published profile of that name (``published``). Each estimate row says which in ``profile_source``.
    """
    from quantbench.experiments.records import RowKey
    from quantbench.store import ResultStore

    doc = _load_results(path)
    if device is not None and not _name(device, 100):
        raise QuantbenchError(f"import: --device {device!r}: expected a printable name of at most 100 characters")
    name = device or doc["device"]
    if profile_gmacs is not None and not _finite(profile_gmacs):
        raise QuantbenchError(f"import: --profile-gmacs must be > 0, got {profile_gmacs}")
    ceilings = doc.get("ceilings")

    def rate_of(scheme: str) -> tuple[float | None, str | None]:
        if profile_gmacs is not None:
            return profile_gmacs, "given"
        measured = ceilings and (ceilings["int8" if scheme != "fp32" else "fp32"] or ceilings["fp32"])
        if measured:
            return measured["gmacs_per_s"], "measured"
        return DEVICE_PROFILES.get(name), "published"
    model = doc["bundle"]["model"]
    macs = {m["scheme"]: m["macs"] for m in doc["bundle"]["models"]}
    data = "input:" + "x".join(map(str, doc["bundle"]["input_shape"]))

    def engine_of(r: dict[str, Any]) -> str:  # results of v1 runners measured ONNX Runtime only
        return r.get("engine", "onnxruntime")

    fp32 = {(engine_of(r), r["batch"]): r["median_ms"] for r in doc["records"] if r["scheme"] == "fp32"}
    rows = []
    for r in doc["records"]:
        engine = engine_of(r)
        key = RowKey(model, data, r["scheme"], f"{engine}@{name}")
        b = int(r["batch"])
        info = {"device": name, "threads": r.get("threads"), "iterations": r.get("iterations"), "p90_ms": r["p90_ms"],
                "format": r.get("format", "onnx")}
        rows.append(key.row("latency_median_ms", r["median_ms"], "ms", b, **info))
        rows.append(key.row("latency_p90_ms", r["p90_ms"], "ms", b, **info))
        rows.append(key.row("throughput_ips", b / (r["median_ms"] / 1000.0), "img/s", b, **info))
        if (engine, b) in fp32:
            rows.append(key.row("device_speedup_vs_fp32", fp32[(engine, b)] / r["median_ms"], "x", b, device=name))
        rate, source = rate_of(r["scheme"])
        if rate is not None and r["scheme"] in macs:
            est = macs[r["scheme"]] * b / (rate * 1e9) * 1000.0
            rows.append(key.row("estimated_latency_ms", est, "ms", b, device=name, profile_gmacs=rate,
                                profile_source=source, convention="MACs x batch / profile rate (GMAC/s)"))
            rows.append(key.row("estimate_error", est / r["median_ms"] - 1.0, "ratio", b, device=name))
    for c in doc["checks"]:
        rows.append(RowKey(model, data, c["scheme"], f"{engine_of(c)}@{name}").row(
            "output_check", 1.0 if c.get("ok") else 0.0, "bool", device=name, cosine=c.get("cosine"),
            top1_agreement=c.get("top1_agreement")))
    if ceilings:
        engine = ceilings["runtime"].split()[0]
        for prec in ("fp32", "int8"):
            if ceilings[prec]:
                rows.append(RowKey(model, data, f"gemm-{prec}", f"{engine}@{name}").row(
                    "device_gemm_gmacs_per_s", ceilings[prec]["gmacs_per_s"], "GMAC/s", device=name, precision=prec,
                    source="measured", threads=ceilings["threads"], runtime=ceilings["runtime"],
                    **{k: ceilings[prec][k] for k in ("gops_per_s", "kernel", "op")}))
    with ResultStore(store_path) as store:
        run_id = store.start_run("device", config={"verb": "import", "source": str(path), "device": name,
                                                   "model": {"name": model}, "data": {"spec": data},
                                                   "bundle": doc["bundle"], "profile_gmacs": profile_gmacs,
                                                   "ceilings": ceilings},
                                 environment={**doc["facts"], "device": name}, name=f"device {name}: {model}")
        store.add_results(run_id, rows)
        store.finish_run(run_id)
    return run_id, len(rows)
