"""``run``: the default experiment - train, evaluate, quantize several ways, fine-tune with QAT, time, report.

``quantbench run`` with no flags trains a small CNN on the embedded ``digits`` images and compares
INT8 static, dynamic, INT4 round-to-nearest and INT4 AdaRound, then INT8 and INT4 QAT.

Example:
    >>> from quantbench.experiments.layer import config_for
    >>> config_for("run", {}).methods
    ('w8a8:mse', 'dynamic', 'w4a8:minmax', 'w4a8:adaround')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from quantbench.config import option
from quantbench.experiments.kinds.ptq import QuantizeOptions, needs_calibration
from quantbench.experiments.kinds.train import TrainConfig
from quantbench.experiments.layer import Context, register_kind
from quantbench.experiments.options import Calibration


@dataclass(frozen=True)
class RunExperiment(QuantizeOptions, Calibration, TrainConfig):
    """Train in FP32, then every PTQ method and every QAT scheme on the same evaluation images."""

    methods: tuple[str, ...] = option(("w8a8:mse", "dynamic", "w4a8:minmax", "w4a8:adaround"),
                                      "PTQ methods, SCHEME[:ALGO] each", metavar="M1,M2")
    qat: tuple[str, ...] = option(("w8a8", "w4a4"), "QAT methods, SCHEME[:INIT] each (fine-tuned from that PTQ "
                                  "start on the training split)", metavar="M1,M2")
    qat_epochs: int = option(3, "QAT epochs", ge=1)
    qat_lr: float = option(1e-3, "QAT learning rate (AdamW, cosine)", gt=0)
    batch_sizes: tuple[int, ...] = option((1, 8, 32), "time FP32 (eager) and INT8 (torch-int8) at these batch sizes "
                                          "(empty: no timing)", metavar="B1,B2", ge=1)

    def check(self) -> None:
        for m in self.methods:
            self.ptq_config(m, self.calib_size)
        for m in self.qat:
            self.qat_config(m)

    def qat_config(self, method: str) -> Any:
        from quantbench.config import TrainConfig as Loop
        from quantbench.errors import QuantbenchError
        from quantbench.quant.qat import QATConfig
        from quantbench.quant.spec import parse_scheme

        scheme, _, init = method.partition(":")
        plan = parse_scheme(scheme.strip())
        if plan.default.act is None or plan.default.act.dynamic or plan.default.weight is None:
            raise QuantbenchError(f"config: qat entry {method!r}: QAT needs a static wXaY scheme")
        loop = Loop(epochs=self.qat_epochs, lr=self.qat_lr, optimizer="adamw", weight_decay=0.0,
                    batch_size=self.batch_size, seed=self.seed)
        return QATConfig(scheme=scheme.strip(), init=init.strip() or "mse", calib_size=self.calib_size,
                         adaround_iters=self.adaround_iters, train=loop)


def run_default(cfg: RunExperiment, ctx: Context) -> dict[str, Any]:
    from quantbench.experiments.kinds.train import train_stage
    from quantbench.experiments.ptq import run_ptq
    from quantbench.experiments.qat import run_qat
    from quantbench.experiments.stages import variant_rows

    p, hist, fp32, train_eval = train_stage(cfg, ctx)
    info = p.rebuild_info()
    kw = {**info, "topk": p.topk, "eval_batch_size": cfg.eval_batch_size, "progress": ctx.progress}
    variants = []
    for method in cfg.methods:
        ptq = cfg.ptq_config(method, cfg.calib_size)
        calib = p.calib if needs_calibration(ptq) else None
        ptq = dataclasses.replace(ptq, calib_size=min(ptq.calib_size, len(calib)) if calib is not None else 0)
        note = cfg.weight_range_note(method) if ptq.weight_range == "reduced" else None
        ctx.log(f"quantize: {ptq.label()}" + (f" (calibration on {ptq.calib_size} images)" if calib else "")
                + (f"; {note}" if note else ""))
        out = run_ptq(p.model, ptq, calib, p.test, p.key, fp32, ctx.out_dir, **kw,
                      sensitivity_images=cfg.sensitivity_images, log=ctx.log)
        ctx.commit(out.rows + variant_rows(p, cfg, out.record["method"], out.model, train_eval, ctx.log))
        variants.append({"method": out.record["method"], **out.record["quant"], "drop": out.record["drop"]})
    fp32_epoch_s = hist.wall_s / len(hist.epochs) if hist is not None and hist.epochs else None
    if cfg.qat and p.train is None:
        ctx.log("qat: skipped - with epochs 0 there is no training split to fine-tune on")
    for method in cfg.qat if p.train is not None else ():
        qcfg = cfg.qat_config(method)
        start = f"{qcfg.ptq().label()}-start"
        ctx.log(f"qat: {qcfg.label()} ({cfg.qat_epochs} epochs on {len(p.train)} images, from {start})")
        out = run_qat(p.model, qcfg, p.calib, p.train, p.test, p.key, fp32, ctx.out_dir, **kw,
                      fp32_epoch_s=fp32_epoch_s, time_fp32=fp32_epoch_s is None, start_label=start)
        ctx.commit(out.rows + [row for part in (out.ptq, out.qat)
                               for row in variant_rows(p, cfg, part.record["method"], part.model, train_eval,
                                                       ctx.log)])
        variants.append({"method": out.qat.record["method"], **out.qat.record["quant"], "drop": out.qat.record["drop"]})
    return {"model": p.loaded.label, "data": cfg.data, "split": p.split, "n_images": fp32.n_images,
            "checkpoint": str(ctx.out_dir / "model_fp32.pt"), "fp32": {"top1": fp32.top1, "ci": fp32.ci},
            "variants": variants}


register_kind("run", RunExperiment, run_default,
              "the default experiment: train, quantize (PTQ and QAT), measure, store, report")
