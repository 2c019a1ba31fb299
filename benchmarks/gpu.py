"""GPU latency of zoo models: PyTorch eager and torch.compile at FP32 (TF32 off) / TF32 / FP16 / BF16,
and ONNX Runtime's CUDA provider (fp32, int8 QDQ) where onnxruntime-gpu is installed.

Ready to run on a machine with an NVIDIA GPU; on a CPU-only machine it says so and exits 0.
Timing: ``measure_latency`` (warm-up, then median/p90 of calls that synchronize on a CUDA event;
ORT: ``run_with_iobinding`` on device-resident input/output) plus, for the torch engines, the
GPU-side CUDA-event median. torch.compile compiles for each batch size before it is timed; the
compile seconds are printed separately. Speed-ups are ratios of medians measured in the same run,
against torch-cuda FP32 at the same batch size.

Usage:
    python benchmarks/gpu.py [--models resnet18,resnet50] [--batch-sizes 1,8,32,128] [--min-time 1]
        [--engines torch-cuda,torch-cuda-compile,onnxruntime-cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

GPU_ENGINES = ("torch-cuda", "torch-cuda-compile", "onnxruntime-cuda")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,resnet50,mobilenet_v2")
    p.add_argument("--batch-sizes", default="1,8,32,128")
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--engines", default=",".join(GPU_ENGINES))
    args = p.parse_args(argv)
    from quantbench.engines import ENGINES, Deployable, load_session
    from quantbench.measure.latency import measure_latency
    from quantbench.models import build_model, model_info
    from quantbench.quant.ptq import PTQConfig, quantize_ptq

    ok, reason = ENGINES.get("torch-cuda").available()
    if not ok:
        print(f"gpu.py: skipped: {reason}")
        return 0
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in GPU_ENGINES]
    if bad:
        print(f"gpu.py: unknown GPU engine(s) {bad}; choose from {', '.join(GPU_ENGINES)}", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    header = (f"{'model':<14}{'engine':<20}{'variant':<9}{'batch':>6}{'median ms':>11}{'p90 ms':>10}{'event ms':>10}"
              f"{'x fp32':>8}{'compile s':>11}")
    print(header + "\n" + "-" * len(header))
    for name in args.models.split(","):
        model = build_model(name).eval()
        shape = model_info(name)["input_shape"]
        quantized = None
        fp32: dict[int, float] = {}
        for engine in engines:
            eok, ereason = ENGINES.get(engine).available()
            if not eok:
                print(f"{name:<14}{engine:<20} skipped: {ereason}")
                continue
            for variant in ENGINES.get(engine).variants:
                vok, vreason = ENGINES.get(engine).supports(variant)
                if not vok:
                    print(f"{name:<14}{engine:<20}{variant:<9} skipped: {vreason}")
                    continue
                if variant == "int8" and quantized is None:  # our W8A8 scales, random calibration images
                    quantized = quantize_ptq(model, PTQConfig("w8a8", "minmax", calib_size=32),
                                             torch.randn(32, *shape))
                sess = load_session(engine, Deployable(model, quantized, shape, name=name), variant)
                for b in batches:
                    lat = measure_latency(sess.runner(b), batch_size=b, min_time_s=args.min_time)
                    events = getattr(sess, "event_ms", [])[-lat.iterations:]
                    ev = f"{statistics.median(events):>10.3f}" if events else f"{'-':>10}"
                    if engine == "torch-cuda" and variant == "fp32":
                        fp32[b] = lat.median_ms
                    comp = sess.info.get("compile_s", {}).get(b)
                    comp_text = f"{comp:>11.1f}" if comp is not None else f"{'-':>11}"
                    print(f"{name:<14}{engine:<20}{variant:<9}{b:>6}{lat.median_ms:>11.3f}{lat.p90_ms:>10.3f}{ev}"
                          f"{fp32.get(b, float('nan')) / lat.median_ms:>8.2f}{comp_text}", flush=True)
                del sess
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
