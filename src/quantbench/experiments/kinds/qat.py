"""``qat``: quantization-aware training from a checkpoint - PTQ start vs QAT vs FP32 on the same images.

The method is ``SCHEME[:INIT]``: QAT at SCHEME, starting from the PTQ model INIT gives
(``w4a4:mse``, ``w4a8:adaround``). With ``budget_kb`` the weights get per-layer bits under that
file size first (mixed precision), then QAT.

Example:
    >>> from quantbench.experiments.layer import config_for
    >>> config_for("qat", {"method": "w4a4:adaround"}).epochs
    5
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from quantbench.config import option
from quantbench.errors import QuantbenchError
from quantbench.experiments.kinds.ptq import AdaRoundOptions
from quantbench.experiments.layer import Context, register_kind
from quantbench.experiments.options import (
    Calibration,
    DataOptions,
    Fitting,
    Pretraining,
    Timing,
    TrainingData,
)


@dataclass(frozen=True)
class QATExperiment(Timing, AdaRoundOptions, Pretraining, Calibration, Fitting, TrainingData, DataOptions):
    """Fine-tune a quantized model with fake quantization in the loop."""

    method: str = option("w4a4:mse", "SCHEME[:INIT]: QAT at SCHEME (wXaY, X and Y in 2..8) starting from the PTQ "
                         "algorithm INIT (mse, adaround, ...)")
    epochs: int = option(5, "QAT epochs", ge=1)
    lr: float = option(1e-4, "QAT learning rate (cosine decay)", gt=0)
    optimizer: str = option("adamw", "optimizer", choices=("sgd", "adamw"))
    weight_decay: float = option(0.0, "weight decay (not on biases and norms)", ge=0)
    act_grad: str = option("lsq", "how activation step sizes learn", choices=("lsq", "pact"))
    first_last: str = option("same", "precision of the first and last layers", choices=("same", "int8", "fp32"))
    bn_freeze_epoch: int = option(0, "BatchNorm statistics keep updating for E epochs, then freeze (0: frozen, "
                                  "folded from the start)", ge=0, metavar="E")
    fp32_finetune: bool = option(True, "also fine-tune the FP32 model the same way (the fair reference, and the "
                                 "training-time baseline)")
    budget_kb: float | None = option(None, "mixed precision first: per-layer weight bits for a file of at most KB "
                                     "(1 KB = 1000 bytes), then QAT", gt=0, metavar="KB")

    def qat_config(self) -> Any:
        from quantbench.quant.qat import QATConfig
        from quantbench.quant.spec import parse_scheme

        scheme, _, init = self.method.partition(":")
        plan = parse_scheme(scheme.strip())
        if plan.default.act is None or plan.default.act.dynamic or plan.default.weight is None:
            raise QuantbenchError(f"config: method {self.method!r}: QAT needs a static wXaY scheme such as w4a4")
        cfg = QATConfig(scheme=scheme.strip(), init=init.strip() or "mse", first_last=self.first_last,
                        act_grad=self.act_grad, bn_freeze_epoch=self.bn_freeze_epoch, calib_size=self.calib_size,
                        adaround_iters=self.adaround_iters, train=self.fit_config())
        cfg.ptq().plan()  # validates the starting algorithm
        return cfg

    def check(self) -> None:
        self.qat_config()


def qat_model(cfg: QATExperiment, ctx: Context) -> dict[str, Any]:
    from quantbench.experiments.prepare import prepare
    from quantbench.experiments.qat import mixed_rows, qat_extra, run_qat, search_mixed
    from quantbench.experiments.stages import pretrained_baseline, variant_rows

    qcfg = cfg.qat_config()
    p = prepare(cfg, ctx, train=True, calib=True)
    hist, fp32, train_eval = pretrained_baseline(p, cfg, ctx)
    info = p.rebuild_info()
    record: dict[str, Any] = {}
    plan = None
    if cfg.budget_kb is not None:
        act = qcfg.ptq().plan().default.act
        search = search_mixed(p.model, p.calib, budget_bytes=int(cfg.budget_kb * 1000), act_bits=int(act.bits),
                              extra=qat_extra(qcfg), **info)
        plan = search.plan
        ctx.commit(mixed_rows(dataclasses.replace(p.key, method="mixed:qat"), search))
        record["mixed"] = {"bits": search.choice.bits, "average_bits": search.choice.average_bits,
                           "predicted_file_bytes": search.predicted_file_bytes}
    fp32_epoch_s = hist.wall_s / len(hist.epochs) if hist is not None and hist.epochs else None
    out = run_qat(p.model, qcfg, p.calib, p.train, p.test, p.key, fp32, ctx.out_dir, plan=plan, **info,
                  topk=p.topk, eval_batch_size=cfg.eval_batch_size, progress=ctx.progress,
                  fp32_epoch_s=fp32_epoch_s, fp32_finetune=cfg.fp32_finetune)
    ctx.commit(out.rows + [row for part in (out.ptq, out.qat)
                           for row in variant_rows(p, cfg, part.record["method"], part.model, train_eval, ctx.log)])
    size = (ctx.out_dir / "model_fp32.pt").stat().st_size
    record.update(out.record(), model=p.loaded.label, data=cfg.data, split=p.split, n_images=fp32.n_images,
                  fp32={"top1": fp32.top1, "top5": fp32.topk.get(5), "ci": fp32.ci, "size_bytes": size})
    return record


register_kind("qat", QATExperiment, qat_model,
              "quantization-aware training from a checkpoint: PTQ start vs QAT vs FP32")
