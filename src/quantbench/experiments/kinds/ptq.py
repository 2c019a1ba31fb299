"""``ptq`` (verb ``quantize``): post-training quantization, FP32 vs quantized on the same images.

The method is spelled ``SCHEME[:ALGO[-TAG...]]`` everywhere (``w8a8:mse``, ``w4a8:adaround``,
``dynamic``); option flags (``--per-tensor``, ``--first-last`` ...) add the same tags.

Example:
    >>> from quantbench.experiments.layer import config_for, run_experiment
    >>> cfg = config_for("ptq", {"pretrain_epochs": 1, "calib_size": 64, "no_store": True})
    >>> run_experiment(cfg, progress=False, log=lambda m: None).record["method"]
    'w8a8:mse'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from quantbench.config import option
from quantbench.errors import QuantbenchError
from quantbench.experiments.layer import Context, register_kind
from quantbench.experiments.options import (
    AccuracyControl,
    Calibration,
    DataOptions,
    Pretraining,
    Timing,
    TrainingData,
    WeightRange,
)
from quantbench.quant.ptq import ALGOS, METHOD_TAGS


@dataclass(frozen=True)
class AdaRoundOptions:
    """The rounding optimisers' budget, wherever they run (PTQ methods and QAT starting points)."""

    adaround_iters: int | None = option(None, "optimisation steps per layer for AdaRound (default 1000), per "
                                        "block for BRECQ/QDrop (default 3000)", ge=1)


@dataclass(frozen=True)
class QuantizeOptions(WeightRange, AdaRoundOptions):
    """How a PTQ method is applied (shared by ``ptq`` and ``run``)."""

    per_tensor: bool = option(False, "one weight scale per tensor (default: per output channel)")
    companding: str = option("none", "mu-law companded weights", choices=("none", "mulaw"))
    mu: float = option(255.0, "mu of the mu-law compander", gt=0)
    first_last: str = option("same", "precision of the first and last layers", choices=("same", "int8", "fp32"))
    equalize: bool = option(False, "cross-layer equalization before quantizing (adds the tag cle)")
    bias_correction: bool = option(False, "empirical bias correction after calibration (adds the tag bc)")
    sensitivity_images: int = option(0, "images for the per-layer sensitivity table (0: skip it)", ge=0)

    def ptq_config(self, method: str, calib_size: int) -> Any:
        """The quantizer's config for ``method`` with these options (flags add to the method's tags)."""
        from quantbench.quant.ptq import parse_method

        cfg = parse_method(method, calib_size=calib_size, adaround_iters=self.adaround_iters, mu=self.mu)
        changes: dict[str, Any] = {}
        if self.per_tensor:
            changes["per_channel"] = False
        if self.companding != "none":
            changes["companding"] = self.companding
        if self.first_last != "same":
            changes["first_last"] = self.first_last
        if self.equalize:
            changes["equalize"] = True
        if self.bias_correction:
            changes["bias_correction"] = True
        cfg = self.with_weight_range(dataclasses.replace(cfg, **changes))
        cfg.plan()
        return cfg


@dataclass(frozen=True)
class PTQExperiment(AccuracyControl, Timing, QuantizeOptions, Pretraining, Calibration, TrainingData, DataOptions):
    """Quantize after training; evaluate FP32 and the quantized model on the same images."""

    method: str = option("w8a8:mse", "SCHEME[:ALGO]: w8a8:mse, w4a8:adaround, w4a4:qdrop-flint8, w8 (weights "
                         f"only), dynamic ...; ALGO one of: {', '.join(ALGOS.names())}; tags after it: "
                         f"{', '.join('-' + t for t in METHOD_TAGS)} (flint8: first/last layer 8-bit; "
                         "asym: weights below 8 bits on an asymmetric grid; jint8/jsame: inputs of residual adds, "
                         "concatenations and pooling at 8 bits / at the activations' bits below 8; without "
                         "either, the one that matches the float model better on the calibration images)")

    def check(self) -> None:
        ptq = self.ptq_config(self.method, self.calib_size)  # a bad method fails before any data is read
        if self.max_drop is not None and ptq.plan().is_fp32:
            raise QuantbenchError(f"config: max_drop needs a quantized method, not {self.method!r}")


def needs_calibration(ptq: Any) -> bool:
    """Static activations, AdaRound and bias correction need images; dynamic/weight-only schemes do not."""
    plan, algo = ptq.plan(), ptq.algorithm()
    act = plan.default.act
    return (act is not None and not act.dynamic) or algo.adaround or algo.bias_correction or algo.equalize


def quantize_model(cfg: PTQExperiment, ctx: Context) -> dict[str, Any]:
    from quantbench.experiments.prepare import prepare
    from quantbench.experiments.ptq import run_ptq
    from quantbench.experiments.stages import pretrained_baseline, variant_rows

    ptq = cfg.ptq_config(cfg.method, cfg.calib_size)
    weight_note = cfg.weight_range_note(cfg.method)
    controlled = cfg.max_drop is not None
    from quantbench.experiments.controlled import val_share

    training = cfg.pretrain_epochs > 0
    p = prepare(cfg, ctx, train=training, calib=needs_calibration(ptq) or controlled,
                val_fraction=val_share(cfg, training) if controlled else 0.0)
    if controlled:
        from quantbench.experiments.controlled import check_provable

        check_provable(p, cfg)
    _, fp32, train_eval = pretrained_baseline(p, cfg, ctx)
    if weight_note and ptq.weight_range == "reduced":  # said (once the model loaded) when it changes the grid
        ctx.log(weight_note)
    calib = p.calib
    ptq = dataclasses.replace(ptq, calib_size=min(ptq.calib_size, len(calib)) if calib is not None else 0)
    if controlled:
        from quantbench.experiments.controlled import controlled_ptq

        out = controlled_ptq(p, cfg, ptq, fp32, ctx)
    else:
        out = run_ptq(p.model, ptq, calib, p.test, p.key, fp32, ctx.out_dir, **p.rebuild_info(), topk=p.topk,
                      eval_batch_size=cfg.eval_batch_size, sensitivity_images=cfg.sensitivity_images,
                      progress=ctx.progress, log=ctx.log)
    ctx.commit(out.rows + variant_rows(p, cfg, out.record["method"], out.model, train_eval, ctx.log))
    size = (ctx.out_dir / "model_fp32.pt").stat().st_size
    from quantbench.measure.params import count_parameters

    return {**out.record, "model": p.loaded.label, "data": cfg.data, "split": p.split, "n_images": fp32.n_images,
            "calib_images": len(calib) if calib is not None else 0, "notes": p.loaded.notes,
            "weight_range": weight_note,
            "fp32": {"top1": fp32.top1, "top5": fp32.topk.get(5), "ci": fp32.ci, "size_bytes": size,
                     "params": count_parameters(p.model)}}


register_kind("ptq", PTQExperiment, quantize_model,
              "post-training quantization: FP32 vs quantized on the same images")
