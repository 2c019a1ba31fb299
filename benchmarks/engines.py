"""Do quantized CNNs run faster here, and does deploying OUR scales cost speed? Measured side by side.

Three questions, one run, every timing by ``measure_latency`` (warm-up, median, p90), every
measurement in a fresh process (so no engine's idle thread pool slows the next one):

1. **Speed-up over PyTorch eager FP32** - the fastest INT8 engine vs PyTorch eager FP32 where a
   case has a target: ResNet-18 at 224x224, batch 1 (target >= 5x) and the CIFAR VGG-16 at 32x32,
   batch 32 (target >= 4x). INT8 engines: ONNX Runtime and OpenVINO running our QDQ export, and
   PyTorch's own quantized kernels (torch-int8).
2. **Our INT8 export vs the engine's own quantizer** - same FP32 model, same calibration
   images, same session settings: our QDQ ONNX on ONNX Runtime vs ONNX Runtime's
   ``quantize_static`` output with the settings ORT recommends for this CPU (``reduce_range`` on x86
   without VNNI; target: ours <= 1.05x its latency), and our QDQ ONNX on OpenVINO vs NNCF's INT8
   model (target <= 1.05x). Latency ratios are measured in alternating rounds (A B A B ...) and the
   median of the per-round ratios is reported, so slow drifts of a noisy machine hit both sides alike.
3. **Best INT8 vs best FP32, as a fraction of what this CPU can give** - the fastest INT8 model of
   any engine (ours or the engine's own) over the fastest FP32 model of any engine (PyTorch eager,
   ONNX Runtime, OpenVINO), divided by this machine's measured INT8/FP32 GEMM ceiling ratio
   (:func:`quantbench.measure.ceiling.measure_ceilings` in its own process, at the start and after each
   case; the fastest measurement of each precision counts, since load only slows a measurement down).
   Target on the ResNets at 224 (batch 1 and 8): >= 0.85.

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

CASES = {  # name: (model, input size, batch, speed-up target vs PyTorch eager FP32 or None)
    "resnet18@224 b1": ("resnet18", 224, 1, 5.0),
    "resnet18@224 b8": ("resnet18", 224, 8, None),
    "resnet50@224 b1": ("resnet50", 224, 1, None),
    "resnet50@224 b8": ("resnet50", 224, 8, None),
    "vgg16_cifar@32 b32": ("vgg16_cifar", 32, 32, 4.0),
}
PARITY_TARGET = 1.05
CEILING_TARGET = 0.85  # best INT8 / best FP32 speed-up >= this x the measured INT8/FP32 GEMM ceiling ratio
CEILING_MODELS = ("resnet18", "resnet50")  # the cases the ceiling target applies to


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads, every engine")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds for the parity ratios")
    p.add_argument("--min-time", type=float, default=1.5, help="timed seconds per measurement")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of: {', '.join(CASES)}")
    p.add_argument("--calib", type=int, default=32, help="calibration images (seeded random)")
    p.add_argument("--ceiling-time", type=float, default=2.5, help="timed seconds for the GEMM ceilings")
    p.add_argument("--out", type=Path, default=None, help="write every measurement as JSON here")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- one measurement (child process)


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Load one model file in one engine and time it; runs in a fresh process."""
    import torch

    from quantbench.measure.latency import measure_latency, peak_rss_bytes

    torch.set_num_threads(job["threads"])
    kind = job["kind"]
    if kind == "ceilings":
        from quantbench.measure.ceiling import measure_ceilings

        return measure_ceilings(job["threads"], budget_s=job["budget_s"])
    shape = tuple(job["shape"])
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
        session = Cls(Path(job["path"]), shape, job["threads"], job.get("variant", "int8"))
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
            "iterations": lat.iterations, "threads": lat.threads, "peak_rss_bytes": peak_rss_bytes(), "info": info,
            "other_cpu_share": lat.other_cpu_share}


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
    from quantbench.quant.ptq import PTQConfig, quantize_ptq, resolve_weight_range
    from quantbench.quant.save import save_quantized

    torch.manual_seed(0)
    model = build_model(model_name).eval()
    shape = (3, size, size)
    x = torch.randn((calib_n, *shape), generator=torch.Generator().manual_seed(1))
    files = {"fp32": export_fp32_onnx(model, work / f"{model_name}_fp32.onnx", shape)}
    # the weight grid `quantbench quantize` would deploy here (7-bit codes on x86 without VNNI/AMX)
    cfg, why = resolve_weight_range(PTQConfig(scheme="w8a8", algo="minmax", calib_size=calib_n, calib_batch_size=8))
    print(f"  ours: {cfg.label()}, weight range {why}", flush=True)
    qm = quantize_ptq(model, cfg, (x, torch.zeros(calib_n, dtype=torch.long)))
    files["ours_qbm"] = work / f"{model_name}.qbm"
    save_quantized(qm, files["ours_qbm"], model_name=model_name, model_kwargs={}, input_shape=shape)
    files["ours_onnx"] = export_qdq_onnx(qm, work / f"{model_name}_ours_qdq.onnx", shape)
    # ONNX Runtime gets our codes as u8 where its u8 x s8 kernels saturate (x86 without VNNI); OpenVINO s8.
    files["ours_onnx_ort"] = export_qdq_onnx(qm, work / f"{model_name}_ours_qdq_ort.onnx", shape,
                                             weight_type=ort_weight_type(qm))
    calib = x.numpy()
    # reduce_range: what ORT recommends for this CPU (7-bit weights on x86 without VNNI)
    files["ort_static"] = ort_quantize_static(files["fp32"], work / f"{model_name}_ort_static.onnx", calib)
    files["nncf"] = nncf_quantize_openvino(files["fp32"], work / f"{model_name}_nncf.xml", calib)
    return files


# ----------------------------------------------------------------------------- main


def machine_line(ceilings: dict[str, Any]) -> str:
    """The CPU, whether its int8 kernels have VNNI/AMX, and the measured GEMM ceilings."""
    from quantbench.engines.base import SATURATION_SAFE_FLAGS, cpu_flags
    from quantbench.measure.ceiling import describe_ceilings
    from quantbench.measure.environment import environment

    found = sorted(cpu_flags() & SATURATION_SAFE_FLAGS)
    return (f"machine: {environment().get('cpu_model')}, "
            + (f"{'/'.join(found)} present" if found else "no VNNI/AMX (AVX2-class int8 kernels)")
            + f"\nGEMM ceilings: {describe_ceilings(ceilings)}")


def best_ceilings(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest fp32 and int8 ceiling of several measurements (a neighbour's load only ever slows one down).

    The ceilings are measured at the start and after every case; on a shared machine a single
    measurement can land on a busy moment for one precision and not the other, which skews the ratio.
    """
    best = dict(measured[0])
    for prec in ("fp32", "int8"):
        got = [m[prec] for m in measured if m.get(prec)]
        best[prec] = max(got, key=lambda c: c["gmacs_per_s"]) if got else None
    best["int8_over_fp32"] = best["int8"]["gmacs_per_s"] / best["fp32"]["gmacs_per_s"] if best["int8"] else None
    best["measurements"] = len(measured)
    best["kernels"] = [k for m in measured for k in m["kernels"]]
    return best


def speed_jobs(files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Step 1: every FP32 engine and every engine running our INT8 model (label -> job)."""
    return {"torch fp32 (eager)": {"kind": "torch-fp32"},
            "onnxruntime fp32": {"kind": "ort", "variant": "fp32", "path": str(files["fp32"])},
            "openvino fp32": {"kind": "ov", "variant": "fp32", "path": str(files["fp32"])},
            "onnxruntime int8 (ours)": {"kind": "ort", "path": str(files["ours_onnx_ort"])},
            "openvino int8 (ours)": {"kind": "ov", "path": str(files["ours_onnx"])},
            "torch-int8 int8 (ours)": {"kind": "torch-int8", "path": str(files["ours_qbm"])}}


def parity_rounds(base: dict[str, Any], files: dict[str, Path], rounds: int, results: list[dict[str, Any]]
                  ) -> dict[str, tuple[float, float, str]]:
    """Step 2: ours vs the engine's own INT8 model in alternating rounds.

    Returns engine -> (median of the per-round ratios ours/theirs, median of their latencies, their name).
    """
    out = {}
    for engine, ours, theirs, their_name in (
        ("onnxruntime", files["ours_onnx_ort"], files["ort_static"], "ORT quantize_static"),
        ("openvino", files["ours_onnx"], files["nncf"], "NNCF"),
    ):
        ratios, their_ms = [], []
        for rnd in range(rounds):
            pair = {}
            order = [("ours", ours), ("theirs", theirs)]
            if rnd % 2:
                order.reverse()
            for who, path in order:
                r = in_fresh_process({**base, "kind": "ort" if engine == "onnxruntime" else "ov", "path": str(path),
                                      "label": f"{engine} int8 ({who})", "round": rnd})
                results.append(r)
                pair[who] = r["median_ms"]
            ratios.append(pair["ours"] / pair["theirs"])
            their_ms.append(pair["theirs"])
            print(f"  {engine:<11} round {rnd + 1}: ours {pair['ours']:.3f} ms, {their_name} {pair['theirs']:.3f} ms, "
                  f"ratio {ratios[-1]:.3f}", flush=True)
        out[engine] = (statistics.median(ratios), statistics.median(their_ms), their_name)
    return out


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
    from quantbench.engines.reference import ort_recommended_reduce_range
    from quantbench.measure.environment import environment

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    common = {"threads": args.threads, "min_time": args.min_time}
    ceiling_job = {"kind": "ceilings", "threads": args.threads, "budget_s": args.ceiling_time}
    measured_ceilings = [in_fresh_process(ceiling_job)]
    print(machine_line(measured_ceilings[0]))
    print(f"ORT quantize_static reduce_range={ort_recommended_reduce_range()} (what ORT recommends for this CPU)")
    results: list[dict[str, Any]] = []
    verdicts: list[tuple[str, float, float, bool]] = []
    summary: list[dict[str, Any]] = []
    built: dict[tuple[str, int], dict[str, Path]] = {}
    with tempfile.TemporaryDirectory(prefix="qb-engines-") as tmp:
        for case in names:
            model, size, batch, target = CASES[case]
            if (model, size) not in built:  # the same files serve every batch size
                work = Path(tmp) / f"{model}_{size}"
                work.mkdir()
                print(f"\n== {model}@{size}: building FP32 ONNX, our INT8, ORT quantize_static and NNCF INT8 "
                      f"({args.calib} random calibration images)", flush=True)
                built[(model, size)] = build_files(model, size, args.calib, work)
            files = built[(model, size)]
            print(f"\n== {case}", flush=True)
            base = {**common, "model": model, "shape": [3, size, size], "batch": batch, "case": case}

            # 1. every FP32 engine, and our INT8 on every engine
            speed = {}
            for label, job in speed_jobs(files).items():
                r = in_fresh_process({**base, **job, "label": label})
                results.append(r)
                speed[label] = r["median_ms"]
                busy = r.get("other_cpu_share")
                print(f"  {label:<26} median {r['median_ms']:9.3f} ms  p90 {r['p90_ms']:9.3f} ms  "
                      f"({r['iterations']} runs" + (f"; other processes {100 * busy:.0f}% CPU)" if busy is not None
                                                    else ")"), flush=True)
            eager = speed["torch fp32 (eager)"]
            ours_int8 = {k: v for k, v in speed.items() if "int8" in k}
            if target is not None:
                best = min(ours_int8, key=ours_int8.get)
                ratio = eager / ours_int8[best]
                verdicts.append((f"{case}: fastest INT8 ({best}) vs PyTorch eager FP32", ratio, target,
                                 ratio >= target))
                print(f"  -> fastest INT8 is {best}: {ratio:.2f}x PyTorch eager FP32 (target >= {target:g}x)")

            # 2. our export vs the engine's own quantizer, alternating rounds
            parity = parity_rounds(base, files, args.rounds, results)
            for engine, (med, _, their_name) in parity.items():
                verdicts.append((f"{case}: ours / {their_name} latency on {engine}", med, PARITY_TARGET,
                                 med <= PARITY_TARGET))

            # 3. best INT8 (any engine, ours or theirs) vs best FP32 (any engine), against the ceiling ratio
            measured_ceilings.append(in_fresh_process(ceiling_job))
            ceiling_ratio = best_ceilings(measured_ceilings)["int8_over_fp32"]
            int8 = {**ours_int8, **{f"{e} int8 ({name})": ms for e, (_, ms, name) in parity.items()}}
            fp32 = {k: v for k, v in speed.items() if "fp32" in k}
            b8, b32 = min(int8, key=int8.get), min(fp32, key=fp32.get)
            gain = fp32[b32] / int8[b8]
            frac = gain / ceiling_ratio if ceiling_ratio else None
            print(f"  -> best INT8 {b8} {int8[b8]:.3f} ms vs best FP32 {b32} {fp32[b32]:.3f} ms: {gain:.2f}x"
                  + (f" = {frac:.2f} of the GEMM ceiling ratio {ceiling_ratio:.2f}" if frac else ""), flush=True)
            if frac is not None and model in CEILING_MODELS:
                verdicts.append((f"{case}: best INT8 / best FP32 as a fraction of the ceiling ratio", frac,
                                 CEILING_TARGET, frac >= CEILING_TARGET))
            summary.append({"case": case, "ours_over_ort_own": parity["onnxruntime"][0],
                            "ours_over_nncf": parity["openvino"][0], "best_int8": b8, "best_int8_ms": int8[b8],
                            "best_fp32": b32, "best_fp32_ms": fp32[b32], "int8_speedup": gain,
                            "fraction_of_ceiling": frac})

    ceilings = best_ceilings(measured_ceilings)
    print("\n" + "=" * 100)
    print(machine_line(ceilings) + f" (fastest of {len(measured_ceilings)} measurements per precision)")
    print(f"\n{'case':<20} {'ours/ORT own':>12} {'ours/NNCF':>10} {'best INT8/FP32':>15} {'of ceiling':>11}  best INT8; "
          "best FP32")
    for c in summary:
        frac = f"{c['fraction_of_ceiling']:.2f}" if c["fraction_of_ceiling"] else "-"
        print(f"{c['case']:<20} {c['ours_over_ort_own']:>12.3f} {c['ours_over_nncf']:>10.3f} {c['int8_speedup']:>14.2f}x "
              f"{frac:>11}  {c['best_int8']}; {c['best_fp32']}")
    print()
    for what, value, target, ok in verdicts:
        cmp = "<=" if "ours /" in what else ">="
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {value:.3f}{'' if 'ceiling' in what else 'x'} "
              f"(target {cmp} {target:g})")
    total = time.perf_counter() - t_start
    print(f"\n{args.threads} threads, {args.rounds} rounds, {args.min_time:g} s per measurement; total {total:.0f} s; "
          f"load average at start {tuple(round(v, 2) for v in load_start)}, at end "
          f"{tuple(round(v, 2) for v in os.getloadavg())} (other work on the machine skews timings: rerun if high)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "benchmark": "engines", "threads": args.threads, "rounds": args.rounds, "min_time_s": args.min_time,
            "ceilings": ceilings, "ort_reduce_range": ort_recommended_reduce_range(), "summary": summary,
            "measurements": results, "verdicts": [dict(zip(("what", "value", "target", "pass"), v, strict=True))
                                                   for v in verdicts],
            "total_s": total, "environment": environment()}, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0 if all(v[3] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
