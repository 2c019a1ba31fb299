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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantbench.bundle_runner import BUNDLE_FORMAT, RESULTS_FORMAT, sha256
from quantbench.errors import QuantbenchError

__all__ = ["DEVICE_PROFILES", "FORMATS", "build_bundle", "import_results"]

FORMATS = ("onnx", "tflite")
"""Model file formats a bundle can carry: ONNX (onnxruntime) and LiteRT flatbuffers (ai-edge-litert)."""


DEVICE_PROFILES = {  # GMAC/s (= GFLOPS / 2) that the latency estimate divides MACs by
    "raspberry-pi-4b": 9.69 / 2,
    "raspberry-pi-zero-2w": 5.10 / 2,
    "nvidia-a100": 19500 / 2,
}
"""Published FP32 rates (GFLOPS, FLOPs = 2 x MACs) converted to GMAC/s; pass ``--profile-gmacs`` for others."""


def build_bundle(model_name: str, *, checkpoint: str | None = None, schemes: tuple[str, ...] = ("fp32", "dynamic",
                 "w8a8"), out_dir: str | Path, input_size: int | None = None, calib: str | None = None,
                 calib_size: int = 64, algo: str = "mse", batch_sizes: tuple[int, ...] = (1, 8),
                 n_samples: int = 8, normalize: str = "auto", make_zip: bool = True,
                 formats: tuple[str, ...] | None = None) -> Path:
    """Write a self-contained bundle folder for ``model_name`` (see the module docstring).

    ``formats``: a subset of :data:`FORMATS`; None means ONNX, plus ``tflite`` where the LiteRT
    engine (litert-torch and ai-edge-litert) is installed.
    """
    import onnxruntime as ort

    from quantbench import __version__
    from quantbench.engines.base import Deployable
    from quantbench.engines.onnxruntime_engine import build_onnx
    from quantbench.experiments.bench import (
        BenchSpec,
        _float_model,
        _input_shape,
        _model_kwargs,
        check_input_size,
    )
    from quantbench.measure.macs import count_macs
    from quantbench.quant.ptq import PTQConfig, quantize_ptq
    from quantbench.quant.spec import parse_scheme

    if not schemes:
        raise QuantbenchError("bundle: --schemes needs at least one scheme")
    for s in schemes:
        if s in ("fp32", "dynamic"):
            continue
        plan = parse_scheme(s)
        w, a = plan.default.weight, plan.default.act
        if w is None or a is None or w.bits != 8 or a.bits != 8 or a.dynamic:
            raise QuantbenchError(f"bundle: scheme {s!r} cannot be deployed as integer ONNX; use fp32, dynamic or w8a8")
    if any(b < 1 for b in batch_sizes):
        raise QuantbenchError(f"bundle: batch sizes must be >= 1, got {batch_sizes}")
    formats = _resolve_formats(formats)
    spec = BenchSpec(model=model_name, checkpoint=checkpoint, input_size=input_size)
    shape = _input_shape(spec)
    kwargs = _model_kwargs(spec, shape)
    model = _float_model(spec, kwargs)
    check_input_size(model, model_name, shape)
    macs = count_macs(model, shape).per_image_macs
    if calib:
        from quantbench.data import open_dataset, subset

        ds = open_dataset(calib, normalize=normalize, resize=shape[1])
        if tuple(ds.input_shape) != shape:
            raise QuantbenchError(f"{calib}: images are {ds.input_shape}, the model takes {shape}")
        x_all, _ = subset(ds, min(len(ds), calib_size + n_samples), seed=0).tensors()
        calib_x, samples = x_all[:calib_size], x_all[calib_size:calib_size + n_samples]
        if len(samples) < 1:
            raise QuantbenchError(f"{calib}: not enough images for {calib_size} calibration and sample images")
    else:
        gen = torch.Generator().manual_seed(0)
        calib_x = torch.randn((calib_size, *shape), generator=gen)
        samples = torch.randn((n_samples, *shape), generator=gen)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise QuantbenchError(f"{out}: folder exists and is not empty; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "samples.npy", samples.numpy().astype(np.float32))
    entries = []
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    x_np = samples.numpy().astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="quantbench-bundle-") as tmp:
        for scheme in schemes:
            qm = None
            variant = scheme if scheme in ("fp32", "dynamic") else "int8"
            if variant == "int8":
                qm = quantize_ptq(model, PTQConfig(scheme=scheme, algo=algo, calib_size=len(calib_x)),
                                  (calib_x, torch.zeros(len(calib_x), dtype=torch.long)))
            dep = Deployable(model, qm, shape, name=model_name)
            common = {"scheme": scheme, "macs": int(macs), "flops": 2 * int(macs),
                      "quantized_with": (f"{scheme}-{algo}, calibrated on {len(calib_x)} "
                                         f"{'images of ' + calib if calib else 'seeded random images'}"
                                         if qm is not None else None)}
            if "onnx" in formats:
                built = build_onnx(dep, variant, Path(tmp))
                dest = out / f"{model_name}_{scheme}.onnx"
                shutil.copyfile(built, dest)
                sess = ort.InferenceSession(str(dest), opts, providers=["CPUExecutionProvider"])
                expected = sess.run(None, {sess.get_inputs()[0].name: x_np})[0]
                entries.append({**common, "format": "onnx", "engine": "onnxruntime", **_file_entry(dest),
                                **_expected_entry(out / f"expected_{scheme}.npy", expected)})
            if "tflite" in formats:
                entries.append({**common, "format": "tflite", "engine": "litert",
                                **_tflite_files(dep, variant, scheme, out,
                                                Path(tmp), batch_sizes, x_np)})
    manifest = {"format": BUNDLE_FORMAT, "model": model_name, "checkpoint": Path(checkpoint).name if checkpoint
                else None, "input_shape": list(shape), "batch_sizes": list(batch_sizes),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quantbench": __version__,
                "samples": {"file": "samples.npy", "sha256": sha256(out / "samples.npy"), "count": len(samples)},
                "formats": list(formats),
                "convention": "MACs per image of conv/linear layers; FLOPs = 2 x MACs",
                "models": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(Path(__file__).with_name("bundle_runner.py"), out / "run_bundle.py")
    (out / "README.txt").write_text(
        f"quantbench bundle: {model_name} ({', '.join(schemes)}), input {'x'.join(map(str, shape))}\n\n"
        "On the device (Python 3, then: pip install numpy onnxruntime"
        + (" ai-edge-litert   # or tflite-runtime, for the .tflite files" if "tflite" in formats else "") + "):\n"
        "    python3 run_bundle.py --device NAME [--threads N] [--batch-sizes 1,8] [--formats onnx,tflite] "
        "--out results.json\n"
        "Back where quantbench is installed:\n"
        "    quantbench import results.json\n", encoding="utf-8")
    if make_zip:
        shutil.make_archive(str(out), "zip", root_dir=out)
    return out


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


def _load_results(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise QuantbenchError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise QuantbenchError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise QuantbenchError(f"{path}: not a device results file (format {doc.get('format') if isinstance(doc, dict) else None!r}; "
                              f"expected {RESULTS_FORMAT!r})")
    for key in ("device", "bundle", "facts", "records", "checks"):
        if key not in doc:
            raise QuantbenchError(f"{path}: missing key {key!r}")
    for i, r in enumerate(doc["records"]):
        missing = [k for k in ("scheme", "batch", "median_ms", "p90_ms") if k not in r]
        if missing:
            raise QuantbenchError(f"{path}: records[{i}] misses {missing[0]!r}")
    return doc


def import_results(path: str | Path, *, store_path: str, device: str | None = None,
                   profile_gmacs: float | None = None) -> tuple[str, int]:
    """Store a device's results (one run, kind ``device``); returns (run id, rows written).

    Rows: latency (median, p90), throughput, speed-up over the same device's fp32, and - when a
    device profile rate is known (``profile_gmacs`` or :data:`DEVICE_PROFILES` by name) - the
    estimated latency ``MACs x batch / rate`` and its error versus the measurement.
    """
    from quantbench.experiments.records import RowKey
    from quantbench.store import ResultStore

    doc = _load_results(path)
    name = device or doc["device"]
    rate = profile_gmacs if profile_gmacs is not None else DEVICE_PROFILES.get(name)
    if rate is not None and rate <= 0:
        raise QuantbenchError(f"import: --profile-gmacs must be > 0, got {rate}")
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
        if rate is not None and r["scheme"] in macs:
            est = macs[r["scheme"]] * b / (rate * 1e9) * 1000.0
            rows.append(key.row("estimated_latency_ms", est, "ms", b, device=name, profile_gmacs=rate,
                                convention="MACs x batch / profile rate (GMAC/s)"))
            rows.append(key.row("estimate_error", est / r["median_ms"] - 1.0, "ratio", b, device=name))
    for c in doc["checks"]:
        rows.append(RowKey(model, data, c["scheme"], f"{engine_of(c)}@{name}").row(
            "output_check", 1.0 if c.get("ok") else 0.0, "bool", device=name, cosine=c.get("cosine"),
            top1_agreement=c.get("top1_agreement")))
    with ResultStore(store_path) as store:
        run_id = store.start_run("device", config={"verb": "import", "source": str(path), "device": name,
                                                   "model": {"name": model}, "data": {"spec": data},
                                                   "bundle": doc["bundle"], "profile_gmacs": rate},
                                 environment={**doc["facts"], "device": name}, name=f"device {name}: {model}")
        store.add_results(run_id, rows)
        store.finish_run(run_id)
    return run_id, len(rows)
