#!/usr/bin/env python3
"""quantbench device runner: check and time a bundle's models on THIS device. Needs only numpy + onnxruntime.

Copied as ``run_bundle.py`` into every bundle written by ``quantbench bundle``; it must not import
quantbench (a Raspberry Pi Zero cannot install PyTorch, it can install onnxruntime). ``.tflite``
files run where a LiteRT runtime is installed (``ai-edge-litert``, else ``tflite-runtime``, else
TensorFlow's ``tf.lite``); without one they are skipped, and the results say why. Likewise ONNX
files are skipped with the reason where onnxruntime is missing.

What it does, in order:

1. verifies the SHA-256 of every file named in ``manifest.json`` - a tampered or truncated model is
   refused before it is loaded (exit code 2, one line naming the file);
2. runs every model on the bundled sample inputs and compares with the outputs recorded when the
   bundle was built (FP32: close values; quantized: same top-1 class and cosine >= 0.99, since integer
   kernels may round differently on another CPU);
3. times every model at every batch size with quantbench's protocol (warm-up runs, then timed runs
   until both a minimum count and a minimum time are reached; median and p90), with the thread count
   recorded (a ``.tflite`` model has one file per batch size; int8-input models get their input
   quantized before timing, as quantbench's LiteRT engine does);
4. measures the device's FP32 and INT8 GEMM ceilings with the runtime it has (``device_gemm.py``, copied
   beside this file: onnxruntime MatMul/Conv vs MatMulInteger/QLinearConv u8 x s8; numpy matmul for fp32
   without onnxruntime), ``--ceiling-time`` seconds in all, so ``quantbench import`` can feed the split
   latency model a measured rate instead of a published one;
5. writes one results JSON with the device's facts (CPU, cores, memory, OS, versions) and those ceilings.

Usage (on the device, inside the unzipped bundle folder)::

    python3 run_bundle.py --device raspberry-pi-4b [--threads 4] [--batch-sizes 1,8] [--formats onnx,tflite]
                          [--ceiling-time 2.5] [--out results.json]

Then, back where quantbench is installed: ``quantbench import results.json``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

try:  # inside the quantbench package
    from . import device_gemm
except ImportError:  # run_bundle.py in a bundle folder, device_gemm.py beside it
    import device_gemm

RESULTS_FORMAT = "quantbench-device-results-v1"
BUNDLE_FORMAT = "quantbench-bundle-v2"
BUNDLE_FORMATS_READ = ("quantbench-bundle-v1", BUNDLE_FORMAT)  # v1: ONNX only, entries without "format"


class BundleError(Exception):
    """A problem with the bundle or the arguments: one line, exit code 2."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in BUNDLE_FORMATS_READ:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path}: format {got!r}; expected one of {', '.join(BUNDLE_FORMATS_READ)}")
    for m in manifest.get("models", []) if isinstance(manifest.get("models"), list) else []:
        if isinstance(m, dict):
            m.setdefault("format", "onnx")
            m.setdefault("engine", "onnxruntime")
    validate_manifest(folder, manifest, path)
    return manifest


def _need(ok: bool, path: Path, key: str, expected: str) -> None:
    if not ok:
        raise BundleError(f"{path}: {key}: expected {expected}")


def _is_int(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _within(path: Path, folder: Path) -> bool:
    """``path`` (links resolved) lies inside ``folder`` (works on the old Pythons small devices run)."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _file_ref(folder: Path, entry, path: Path, key: str, file_key: str = "file", sha_key: str = "sha256") -> None:
    """A file named by the manifest: a plain name inside the bundle folder, with a SHA-256."""
    _need(isinstance(entry, dict), path, key, "a mapping")
    name, digest = entry.get(file_key), entry.get(sha_key)
    _need(isinstance(name, str) and bool(name), path, f"{key}.{file_key}", "a file name")
    parts = Path(name).parts
    inside = not Path(name).is_absolute() and ".." not in parts and _within(folder / name, folder)
    _need(inside, path, f"{key}.{file_key}", f"a file inside the bundle folder, not {name!r}")
    _need(isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest), path,
          f"{key}.{sha_key}", "a SHA-256 hex digest")


def validate_manifest(folder: Path, m: dict, path: Path) -> None:
    """Every key the runner uses, with its type and range; file names confined to the bundle folder."""
    shape = m.get("input_shape")
    _need(isinstance(shape, list) and len(shape) == 3 and all(_is_int(d, 1, 8192) for d in shape), path,
          "input_shape", "[C, H, W] of positive integers")
    batches = m.get("batch_sizes")
    _need(isinstance(batches, list) and bool(batches) and all(_is_int(b, 1, 4096) for b in batches), path,
          "batch_sizes", "a list of integers in 1..4096")
    _file_ref(folder, m.get("samples"), path, "samples")
    models = m.get("models")
    _need(isinstance(models, list) and bool(models), path, "models", "a non-empty list")
    for i, e in enumerate(models):
        key = f"models[{i}]"
        _need(isinstance(e, dict), path, key, "a mapping")
        _need(isinstance(e.get("scheme"), str) and 0 < len(e["scheme"]) <= 100, path, f"{key}.scheme", "a name")
        _need(e.get("format") in ("onnx", "tflite"), path, f"{key}.format", "onnx or tflite")
        _need(isinstance(e.get("engine"), str), path, f"{key}.engine", "a name")
        _file_ref(folder, e, path, key)
        _file_ref(folder, e, path, key, "expected", "expected_sha256")
        files = e.get("batch_files", {})
        _need(isinstance(files, dict), path, f"{key}.batch_files", "a mapping of batch size -> file")
        for b, f in files.items():
            _need(str(b).isdigit(), path, f"{key}.batch_files", "batch sizes as keys")
            _file_ref(folder, f, path, f"{key}.batch_files[{b}]")


def verify(folder: Path, manifest: dict) -> None:
    """Every listed file exists and has its recorded checksum (before anything is loaded)."""
    files = [manifest["samples"]] + [m for m in manifest["models"]] + [
        {"file": m["expected"], "sha256": m["expected_sha256"]} for m in manifest["models"]] + [
        f for m in manifest["models"] for f in m.get("batch_files", {}).values()]
    for entry in files:
        path = folder / entry["file"]
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle")
        got = sha256(path)
        if got != entry["sha256"]:
            raise BundleError(f"{path}: checksum mismatch (sha256 {got[:16]}..., manifest says "
                              f"{entry['sha256'][:16]}...): the file was modified or damaged; refusing to run it")


def device_facts(litert=None) -> dict:
    """CPU, cores, memory, OS and package versions; ``litert``: :func:`tflite_interpreter`'s answer."""
    facts = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
             "logical_cores": os.cpu_count(), "cpu_model": platform.processor() or None, "memory_total_bytes": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["memory_total_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    import numpy

    facts["packages"] = {"numpy": numpy.__version__}
    try:
        import onnxruntime

        facts["packages"]["onnxruntime"] = onnxruntime.__version__
        facts["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    if litert is not None:
        facts["packages"][litert[1]] = litert[2]
    return facts


def tflite_interpreter():
    """``(Interpreter class, package, version)`` of the first LiteRT runtime installed, or None."""
    import importlib

    for module, package in (("ai_edge_litert.interpreter", "ai-edge-litert"),
                            ("tflite_runtime.interpreter", "tflite-runtime"), ("tensorflow", "tensorflow")):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        cls = mod.lite.Interpreter if package == "tensorflow" else mod.Interpreter
        try:
            from importlib.metadata import version

            ver = version(package)
        except Exception:  # noqa: BLE001 - a version is a nicety
            ver = getattr(mod, "__version__", "unknown")
        return cls, package, ver
    return None


class OnnxModel:
    """An ONNX file in onnxruntime (CPU), any batch size."""

    def __init__(self, path: Path, threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or 0)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.name = self.sess.get_inputs()[0].name

    def __call__(self, x):
        return self.sess.run(None, {self.name: x})[0]

    def timed(self, x):
        feeds = {self.name: x}
        return lambda: self.sess.run(None, feeds)


class TfliteModel:
    """A ``.tflite`` file (fixed batch) in a LiteRT interpreter; int8 inputs/outputs are (de)quantized."""

    def __init__(self, path: Path, threads, interpreter_cls):
        import numpy as np

        self.np = np
        self.it = interpreter_cls(model_path=str(path), num_threads=threads)  # None: the runtime's default
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]

    def feed(self, x):
        np = self.np
        if self.inp["dtype"] == np.float32:
            return x
        scale, zp = self.inp["quantization"]
        info = np.iinfo(self.inp["dtype"])
        return np.clip(np.round(x / np.float32(scale)) + zp, info.min, info.max).astype(self.inp["dtype"])

    def __call__(self, x):
        np = self.np
        self.it.set_tensor(self.inp["index"], self.feed(x))
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"])
        if self.out["dtype"] != np.float32:
            scale, zp = self.out["quantization"]
            y = (y.astype(np.float32) - zp) * np.float32(scale)
        return y

    def timed(self, x):
        fed, index, it = self.feed(x), self.inp["index"], self.it

        def once():
            it.set_tensor(index, fed)
            it.invoke()

        return once


def measure(fn, *, warmup: int, min_iters: int, min_time_s: float, max_iters: int = 1000) -> dict:
    """quantbench's timing protocol (same as quantbench.measure.latency.measure_latency)."""
    import numpy as np

    for _ in range(warmup):
        fn()
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    samples = []
    try:
        timed = 0.0
        while len(samples) < max_iters and (len(samples) < min_iters or timed < min_time_s):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            samples.append(dt)
            timed += dt
    finally:
        if was:
            gc.enable()
    ms = np.asarray(samples) * 1000.0
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "mean_ms": float(ms.mean()),
            "min_ms": float(ms.min()), "iterations": len(samples), "warmup": warmup}


def _check(entry: dict, got, want) -> dict:
    import numpy as np

    got, want = got.astype(np.float64), want.astype(np.float64)
    same_top1 = float(np.mean(got.argmax(1) == want.argmax(1)))
    cos = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want) + 1e-30))
    if entry["scheme"] == "fp32":
        ok = bool(np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max()))))
    else:
        ok = same_top1 == 1.0 and cos >= 0.99
    return {"scheme": entry["scheme"], "engine": entry["engine"], "format": entry["format"], "ok": ok,
            "top1_agreement": same_top1, "cosine": cos, "max_abs_diff": float(np.abs(got - want).max())}


def ceilings(threads: int | None, budget_s: float) -> dict:
    """This device's FP32 and INT8 GEMM ceilings (:func:`device_gemm.gemm_ceilings`), timed with :func:`measure`."""
    return device_gemm.gemm_ceilings(threads, budget_s,
                                     lambda fn, t: measure(fn, warmup=1, min_iters=3, min_time_s=t))


def run(folder: Path, device: str, threads: int | None, batch_sizes: list[int] | None, min_time_s: float,
        warmup: int, min_iters: int, formats: list[str] | None = None, ceiling_time_s: float = 2.5) -> dict:
    import numpy as np

    manifest = load_manifest(folder)
    verify(folder, manifest)
    samples = np.load(folder / manifest["samples"]["file"], allow_pickle=False)
    if samples.dtype != np.float32 or tuple(samples.shape[1:]) != tuple(manifest["input_shape"]):
        raise BundleError(f"{manifest['samples']['file']}: samples of shape {samples.shape} {samples.dtype}; "
                          f"expected float32 (N, {', '.join(map(str, manifest['input_shape']))})")
    batches = batch_sizes or manifest["batch_sizes"]
    if any(b < 1 for b in batches):
        raise BundleError(f"batch sizes must be >= 1, got {batches}")
    present = sorted({m["format"] for m in manifest["models"]})
    if formats and set(formats) - set(present):
        raise BundleError(f"--formats {','.join(formats)}: this bundle holds {', '.join(present)}")
    litert = tflite_interpreter()
    try:
        import onnxruntime  # noqa: F401
        has_ort = True
    except ImportError:
        has_ort = False
    records, checks, skipped = [], [], []
    rng = np.random.default_rng(0)
    for entry in manifest["models"]:
        fmt = entry["format"]
        if formats and fmt not in formats:
            continue
        if fmt == "onnx" and not has_ort:
            skipped.append({"scheme": entry["scheme"], "format": fmt, "reason": "onnxruntime is not installed "
                            "(pip install onnxruntime)"})
            continue
        if fmt == "tflite" and litert is None:
            skipped.append({"scheme": entry["scheme"], "format": fmt, "reason": "no LiteRT runtime is installed "
                            "(pip install ai-edge-litert, or tflite-runtime)"})
            continue
        if fmt not in ("onnx", "tflite"):
            raise BundleError(f"{entry['file']}: unknown model format {fmt!r}")

        def load(path, fmt=fmt):
            return OnnxModel(path, threads) if fmt == "onnx" else TfliteModel(path, threads, litert[0])

        first = load(folder / entry["file"])
        if fmt == "onnx":
            got = first(samples)
        else:  # the batch-1 file, one sample at a time
            got = np.concatenate([first(samples[i:i + 1]) for i in range(len(samples))])
        checks.append(_check(entry, got, np.load(folder / entry["expected"], allow_pickle=False)))
        for b in batches:
            if fmt == "tflite":
                spec = entry.get("batch_files", {}).get(str(b))
                if spec is None:
                    skipped.append({"scheme": entry["scheme"], "format": fmt, "batch": b,
                                    "reason": f"the bundle has no .tflite file for batch {b}"})
                    continue
                model = load(folder / spec["file"])
            else:
                model = first
            x = rng.standard_normal((b, *manifest["input_shape"]), dtype=np.float32)
            stats = measure(model.timed(x), warmup=warmup, min_iters=min_iters, min_time_s=min_time_s)
            records.append({"scheme": entry["scheme"], "engine": entry["engine"], "format": fmt, "batch": b,
                            "threads": threads or 0, "throughput_ips": b / (stats["median_ms"] / 1000.0), **stats})
    return {"format": RESULTS_FORMAT, "device": device, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "bundle": {"model": manifest["model"], "input_shape": manifest["input_shape"],
                       "created": manifest["created"], "manifest_sha256": sha256(folder / "manifest.json"),
                       "models": [{k: m[k] for k in ("scheme", "file", "sha256", "macs", "bytes", "format", "engine")}
                                  for m in manifest["models"]]},
            "facts": device_facts(litert), "engines": sorted({r["engine"] for r in records}), "checks": checks,
            "records": records, "skipped": skipped,
            "ceilings": ceilings(threads, ceiling_time_s) if ceiling_time_s > 0 else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="check and time a quantbench bundle on this device")
    p.add_argument("--device", required=True, help="a name for this device, e.g. raspberry-pi-4b")
    p.add_argument("--bundle", default=str(Path(__file__).resolve().parent), help="bundle folder (default: here)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: onnxruntime's)")
    p.add_argument("--batch-sizes", default=None, help="comma list (default: the bundle's)")
    p.add_argument("--formats", default=None, help="comma list of onnx, tflite (default: every format in the bundle)")
    p.add_argument("--min-time", type=float, default=1.0, help="timed seconds per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--min-iters", type=int, default=10)
    p.add_argument("--ceiling-time", type=float, default=2.5,
                   help="timed seconds for this device's FP32/INT8 GEMM ceilings (0: do not measure them)")
    p.add_argument("--out", default="results.json")
    args = p.parse_args(argv)
    try:
        batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None
    except ValueError:
        print(f"run_bundle: error: --batch-sizes expects integers, got {args.batch_sizes!r}", file=sys.stderr)
        return 2
    try:
        result = run(Path(args.bundle), args.device, args.threads, batches, args.min_time, args.warmup,
                     args.min_iters, args.formats.split(",") if args.formats else None, args.ceiling_time)
    except BundleError as exc:
        print(f"run_bundle: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a runtime's own failure: one line, not a traceback
        print(f"run_bundle: error: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}",
              file=sys.stderr)
        return 1
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    bad = [f"{c['scheme']} ({c['format']})" for c in result["checks"] if not c["ok"]]
    for r in result["records"]:
        print(f"{r['scheme']:<10} {r['format']:<6} batch {r['batch']:>4}: median {r['median_ms']:9.3f} ms  "
              f"p90 {r['p90_ms']:9.3f} ms")
    for sk in result["skipped"]:
        print(f"skipped {sk['scheme']} ({sk['format']}" + (f", batch {sk['batch']}" if "batch" in sk else "")
              + f"): {sk['reason']}")
    if result["ceilings"]:
        print("GEMM ceilings: " + device_gemm.describe(result["ceilings"]))
    print(f"wrote {args.out}" + (f"; OUTPUT CHECK FAILED for {', '.join(bad)}" if bad else "; all output checks passed"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
