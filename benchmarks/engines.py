"""Do quantized CNNs run faster here, and does deploying OUR scales cost speed? Measured side by side.

Two questions, one run, every timing by ``measure_latency`` (warm-up, median, p90), every
measurement in a fresh process (so no engine's idle thread pool slows the next one):

1. **Speed-up over PyTorch eager FP32** - the fastest INT8 engine vs PyTorch eager FP32:
   ResNet-18 at 224x224, batch 1 (target >= 5x) and the CIFAR VGG-16 at 32x32, batch 32
   (target >= 4x). INT8 engines: ONNX Runtime and OpenVINO running our QDQ export, and
   PyTorch's own quantized kernels (torch-int8).
2. **Our INT8 export vs the engine's own quantizer** - same FP32 model, same calibration
   images, same session settings: our QDQ ONNX on ONNX Runtime vs ONNX Runtime's
   ``quantize_static`` output (target: ours <= 1.05x its latency), and our QDQ ONNX on OpenVINO vs
   NNCF's INT8 model (target <= 1.05x). Latency ratios are measured in alternating rounds
   (A B A B ...) and the median of the per-round ratios is reported, so slow drifts of a
   noisy machine hit both sides alike.

Weights are random (seeded): speed does not depend on their values; calibration uses seeded
random images for all quantizers alike. Machine load is printed: on a loaded machine rerun.

Usage:
    .venv/bin/python benchmarks/engines.py [--threads 2] [--rounds 3] [--min-time 1.5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

CASES = {  # name: (model, input size, batch, speed-up target vs PyTorch eager FP32)
    "resnet18@224 b1": ("resnet18", 224, 1, 5.0),
    "vgg16_cifar@32 b32": ("vgg16_cifar", 32, 32, 4.0),
}
PARITY_TARGET = 1.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads, every engine")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds for the parity ratios")
    p.add_argument("--min-time", type=float, default=1.5, help="timed seconds per measurement")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of: {', '.join(CASES)}")
    p.add_argument("--calib", type=int, default=32, help="calibration images (seeded random)")
    p.add_argument("--out", type=Path, default=None, help="write every measurement as JSON here")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- one measurement (child process)


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Load one model file in one engine and time it; runs in a fresh process."""
    import torch

    from quantbench.measure.latency import measure_latency, peak_rss_bytes

    torch.set_num_threads(job["threads"])
    shape = tuple(job["shape"])
    kind = job["kind"]
    if kind == "torch-fp32":
        from quantbench.measure.latency import torch_runner
        from quantbench.models import build_model

        torch.manual_seed(0)
        model = build_model(job["model"]).eval()
        run = torch_runner(model, shape, job["batch"])
        info = {"precision": "fp32", "engine": "torch"}
    elif kind in ("ort", "ov"):
        if kind == "ort":
            from quantbench.engines.onnxruntime_engine import OrtSession as Cls
        else:
            from quantbench.engines.openvino_engine import OpenVinoSession as Cls
        session = Cls(Path(job["path"]), shape, job["threads"], "int8")
        run = session.runner(job["batch"])
        info = {k: v for k, v in session.info.items() if isinstance(v, (str, int, float))}
    elif kind == "torch-int8":
        from quantbench.engines.base import Deployable, load_session
        from quantbench.models import build_model
        from quantbench.quant.save import load_quantized

        qm = load_quantized(job["path"])
        torch.manual_seed(0)
        session = load_session("torch-int8", Deployable(build_model(job["model"]).eval(), qm, shape, job["model"]),
                               "int8", threads=job["threads"])
        run = session.runner(job["batch"])
        info = {k: v for k, v in session.info.items() if isinstance(v, (str, int, float))}
    else:
        raise ValueError(kind)
    lat = measure_latency(run, batch_size=job["batch"], threads=job["threads"], min_time_s=job["min_time"])
    return {**{k: v for k, v in job.items() if k != "threads"}, "median_ms": lat.median_ms, "p90_ms": lat.p90_ms,
            "iterations": lat.iterations, "threads": lat.threads, "peak_rss_bytes": peak_rss_bytes(), "info": info}


def in_fresh_process(job: dict[str, Any]) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, job).result()


# ----------------------------------------------------------------------------- files to deploy (this process)


def build_files(model_name: str, size: int, calib_n: int, work: Path) -> dict[str, Path]:
    """FP32 ONNX, our QDQ INT8 ONNX (+ .qbm), ORT quantize_static, NNCF IR - same model, same images."""
    import torch

    from quantbench.engines.export_qdq import export_qdq_onnx, ort_weight_type
    from quantbench.engines.onnx_export import export_fp32_onnx
    from quantbench.engines.reference import nncf_quantize_openvino, ort_quantize_static
    from quantbench.models import build_model
    from quantbench.quant.ptq import PTQConfig, quantize_ptq
    from quantbench.quant.save import save_quantized

    torch.manual_seed(0)
    model = build_model(model_name).eval()
    shape = (3, size, size)
    x = torch.randn((calib_n, *shape), generator=torch.Generator().manual_seed(1))
    files = {"fp32": export_fp32_onnx(model, work / f"{model_name}_fp32.onnx", shape)}
    qm = quantize_ptq(model, PTQConfig(scheme="w8a8", algo="minmax", calib_size=calib_n, calib_batch_size=8),
                      (x, torch.zeros(calib_n, dtype=torch.long)))
    files["ours_qbm"] = work / f"{model_name}.qbm"
    save_quantized(qm, files["ours_qbm"], model_name=model_name, model_kwargs={}, input_shape=shape)
    files["ours_onnx"] = export_qdq_onnx(qm, work / f"{model_name}_ours_qdq.onnx", shape)
    # ONNX Runtime gets our codes as u8 where its u8 x s8 kernels saturate (x86 without VNNI); OpenVINO s8.
    files["ours_onnx_ort"] = export_qdq_onnx(qm, work / f"{model_name}_ours_qdq_ort.onnx", shape,
                                             weight_type=ort_weight_type())
    calib = x.numpy()
    files["ort_static"] = ort_quantize_static(files["fp32"], work / f"{model_name}_ort_static.onnx", calib)
    files["nncf"] = nncf_quantize_openvino(files["fp32"], work / f"{model_name}_nncf.xml", calib)
    return files


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in names if c not in CASES]
    if bad:
        print(f"engines.py: unknown case(s) {bad}; choose from {list(CASES)}", file=sys.stderr)
        return 2
    try:
        import nncf  # noqa: F401
        import onnxruntime  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as exc:
        print(f"engines.py: needs onnxruntime, openvino and nncf ({exc}); run `make venv`", file=sys.stderr)
        return 1
    from quantbench.measure.environment import environment

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    common = {"threads": args.threads, "min_time": args.min_time}
    results: list[dict[str, Any]] = []
    verdicts: list[tuple[str, float, float, bool]] = []
    with tempfile.TemporaryDirectory(prefix="qb-engines-") as tmp:
        for case in names:
            model, size, batch, target = CASES[case]
            work = Path(tmp) / model
            work.mkdir()
            print(f"\n== {case}: building FP32 ONNX, our INT8, ORT quantize_static and NNCF INT8 "
                  f"({args.calib} random calibration images)", flush=True)
            files = build_files(model, size, args.calib, work)
            base = {**common, "model": model, "shape": [3, size, size], "batch": batch, "case": case}

            # 1. speed-up of the fastest INT8 engine over PyTorch eager FP32
            jobs = {"torch fp32 (eager)": {"kind": "torch-fp32"},
                    "onnxruntime int8 (ours)": {"kind": "ort", "path": str(files["ours_onnx_ort"])},
                    "openvino int8 (ours)": {"kind": "ov", "path": str(files["ours_onnx"])},
                    "torch-int8 int8 (ours)": {"kind": "torch-int8", "path": str(files["ours_qbm"])}}
            speed = {}
            for label, job in jobs.items():
                r = in_fresh_process({**base, **job, "label": label})
                results.append(r)
                speed[label] = r["median_ms"]
                print(f"  {label:<26} median {r['median_ms']:9.3f} ms  p90 {r['p90_ms']:9.3f} ms  "
                      f"({r['iterations']} runs)", flush=True)
            ref = speed.pop("torch fp32 (eager)")
            best = min(speed, key=speed.get)
            ratio = ref / speed[best]
            verdicts.append((f"{case}: fastest INT8 ({best}) vs PyTorch eager FP32", ratio, target, ratio >= target))
            print(f"  -> fastest INT8 is {best}: {ratio:.2f}x PyTorch eager FP32 (target >= {target:g}x)")

            # 2. our export vs the engine's own quantizer, alternating rounds
            for engine, ours, theirs, their_name in (
                ("ort", files["ours_onnx_ort"], files["ort_static"], "ORT quantize_static"),
                ("ov", files["ours_onnx"], files["nncf"], "NNCF"),
            ):
                ratios = []
                for rnd in range(args.rounds):
                    pair = {}
                    order = [("ours", ours), ("theirs", theirs)]
                    if rnd % 2:
                        order.reverse()
                    for who, path in order:
                        r = in_fresh_process({**base, "kind": engine, "path": str(path), "label": f"{engine} {who}",
                                              "round": rnd})
                        results.append(r)
                        pair[who] = r["median_ms"]
                    ratios.append(pair["ours"] / pair["theirs"])
                    print(f"  {'onnxruntime' if engine == 'ort' else 'openvino':<11} round {rnd + 1}: ours "
                          f"{pair['ours']:.3f} ms, {their_name} {pair['theirs']:.3f} ms, ratio {ratios[-1]:.3f}",
                          flush=True)
                med = statistics.median(ratios)
                engine_name = "onnxruntime" if engine == "ort" else "openvino"
                verdicts.append((f"{case}: ours / {their_name} latency on {engine_name}", med, PARITY_TARGET,
                                 med <= PARITY_TARGET))

    print("\n" + "=" * 100)
    for what, value, target, ok in verdicts:
        cmp = ">=" if "fastest" in what else "<="
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {value:.3f}x (target {cmp} {target:g}x)")
    total = time.perf_counter() - t_start
    print(f"\n{args.threads} threads, {args.rounds} rounds, {args.min_time:g} s per measurement; total {total:.0f} s; "
          f"load average at start {tuple(round(v, 2) for v in load_start)}, at end "
          f"{tuple(round(v, 2) for v in os.getloadavg())} (other work on the machine skews timings: rerun if high)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "benchmark": "engines", "threads": args.threads, "rounds": args.rounds, "min_time_s": args.min_time,
            "measurements": results, "verdicts": [dict(zip(("what", "value", "target", "pass"), v, strict=True))
                                                   for v in verdicts],
            "total_s": total, "environment": environment()}, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0 if all(v[3] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
