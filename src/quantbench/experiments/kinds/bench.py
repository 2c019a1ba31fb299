"""``bench``: latency/throughput of a model on every engine x variant x batch size.

Example:
    >>> from quantbench.experiments.layer import config_for
    >>> config_for("bench", {"model": "resnet20", "engines": "torch,onnxruntime"}).engines
    ('torch', 'onnxruntime')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.config import option
from quantbench.experiments.layer import Context, register_kind
from quantbench.experiments.options import ModelOptions, Normalize, WeightRange


@dataclass(frozen=True)
class BenchExperiment(WeightRange, Normalize, ModelOptions):
    """Time the model deployed on real engines; INT8 deploys OUR scales (a .qbm, or calibrated here)."""

    engines: tuple[str, ...] = option(("all",), "engines, comma-separated, or all (see `quantbench engines`)",
                                      metavar="all|LIST")
    variants: tuple[str, ...] = option((), "engine precisions: fp32, bf16, int8, dynamic, fp16, tf32 (default: "
                                       "all an engine supports here)", metavar="LIST")
    batch_sizes: tuple[int, ...] = option((1, 8, 32), "batch sizes to time", metavar="B1,B2", ge=1)
    quantized: str | None = option(None, "a .qbm (or a folder holding one, from `quantbench quantize --out`) whose "
                                   "scales int8 deploys", metavar="QBM", path="file")
    method: str = option("w8a8:minmax", "without --quantized: the PTQ method that calibrates int8")
    calib: str | None = option(None, "without --quantized: images that calibrate int8 (default: seeded random "
                               "images; speed does not depend on the scales)", metavar="SPEC", path="data")
    calib_size: int = option(32, "calibration images for int8", metavar="N", ge=1)
    warmup: int = option(5, "untimed warm-up calls per batch size", ge=0)
    min_iters: int = option(10, "timed calls per batch size, at least", ge=1)
    min_time_s: float = option(1.0, "timed seconds per cell, at least", gt=0)
    isolate: bool = option(True, "run each engine in a fresh process (honest peak RSS; off: faster)")

    def check(self) -> None:
        from quantbench.experiments.bench import plan_jobs
        from quantbench.quant.ptq import parse_method

        plan_jobs(self.engines, self.variants)
        parse_method(self.method)

    def spec(self) -> Any:
        from quantbench.experiments.bench import BenchSpec
        from quantbench.quant.ptq import parse_method

        method = self.with_weight_range(parse_method(self.method)).label()
        return BenchSpec(model=self.model, checkpoint=self.checkpoint, quantized=self.quantized, engines=self.engines,
                         variants=self.variants, batch_sizes=self.batch_sizes, input_shape=self.input_shape,
                         threads=self.threads, num_classes=self.num_classes, hyper=dict(self.hyper), calib=self.calib,
                         calib_size=self.calib_size, method=method, normalize=self.normalize,
                         warmup=self.warmup, min_iters=self.min_iters, min_time_s=self.min_time_s,
                         isolate=self.isolate)


def bench_model(cfg: BenchExperiment, ctx: Context) -> dict[str, Any]:
    from quantbench.experiments.bench import bench_rows, public_record, run_bench
    from quantbench.experiments.bench_findings import bench_findings

    res = run_bench(cfg.spec(), model=ctx.model, quantized=ctx.quantized,
                    log=ctx.log if ctx.progress else (lambda m: None))
    c, h, w = res.input_shape
    ctx.commit(bench_rows(res, f"input:{c}x{h}x{w}"))
    return {"model": res.model, "input_shape": list(res.input_shape), "per_image_macs": res.per_image_macs,
            "quantized_from": res.quantized_from, "records": [public_record(r) for r in res.records],
            "skipped": res.skipped, "peaks": res.peaks, "findings": bench_findings(res.records)}


register_kind("bench", BenchExperiment, bench_model,
              "latency/throughput of a model on every engine x variant x batch size")
