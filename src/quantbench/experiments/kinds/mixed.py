"""``mixed``: per-layer weight bits under a size budget, against uniform PTQ at the same activation bits.

Example:
    >>> from quantbench.experiments.layer import config_for
    >>> config_for("mixed", {"budget_kb": 170}).bits
    (2, 3, 4, 5, 6, 8)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from quantbench.config import option
from quantbench.errors import QuantbenchError
from quantbench.experiments.layer import Context, register_kind
from quantbench.experiments.options import Calibration, DataOptions, Pretraining, TrainingData


@dataclass(frozen=True)
class MixedExperiment(Pretraining, Calibration, TrainingData, DataOptions):
    """Mixed-precision weights: sensitivity per layer and bit-width, then the best bits under the budget."""

    budget_kb: float | None = option(None, "size of the saved file, 1 KB = 1000 bytes", gt=0, metavar="KB")
    avg_bits: float | None = option(None, "or: parameter-weighted average weight bits", ge=2, le=8, metavar="BITS")
    bits: tuple[int, ...] = option((2, 3, 4, 5, 6, 8), "candidate weight bit-widths", metavar="B1,B2", ge=2, le=8)
    metric: str = option("mse", "layer sensitivity: logits MSE or HAWQ Hessian-trace estimate",
                         choices=("mse", "hessian"))
    method: str = option("w4a8:mse", "the uniform model shown beside, wXaY:ALGO; the mixed model uses its "
                         "activation bits and algorithm")

    def uniform(self, calib_size: int) -> Any:
        """The uniform PTQ config, validated (a wXaY scheme with both bit-widths in 2..8)."""
        from quantbench.quant.ptq import parse_method

        cfg = parse_method(self.method, calib_size=calib_size)
        plan = cfg.plan()
        w, a = plan.default.weight, plan.default.act
        if w is None or a is None or a.dynamic or not (2 <= w.bits <= 8 and 2 <= a.bits <= 8):
            raise QuantbenchError(f"config: method {self.method!r}: mixed precision compares with a static wXaY "
                                  "method, X and Y in 2..8 (e.g. w4a8:mse)")
        return cfg

    def check(self) -> None:
        if (self.budget_kb is None) == (self.avg_bits is None):
            raise QuantbenchError("config: give exactly one budget: budget_kb (--budget-kb) or avg_bits (--avg-bits)")
        self.uniform(1)


def quantize_mixed(p: Any, uniform: Any, fp32: Any, ctx: Context, *, budget: dict[str, Any], bits: tuple[int, ...],
                   metric: str, eval_batch_size: int) -> tuple[Any, Any, float]:
    """Search per-layer weight bits under ``budget`` at ``uniform``'s activation bits and algorithm, record the
    mixed model beside FP32 on ``p.test`` and commit its rows (shared by ``mixed`` and ``recommend``).

    Returns (the :class:`~quantbench.experiments.ptq.PTQOutcome`, the search, its top-1 on the calibration images).
    """
    from quantbench.experiments.ptq import ptq_extra, run_ptq
    from quantbench.experiments.qat import mixed_rows, search_mixed
    from quantbench.measure.accuracy import evaluate

    info = p.rebuild_info()
    act_bits = int(uniform.plan().default.act.bits)
    mixed_cfg = dataclasses.replace(uniform, scheme=f"w8a{act_bits}")
    search = search_mixed(p.model, p.calib, bits=tuple(sorted(set(bits))), act_bits=act_bits, metric=metric,
                          n_images=min(len(p.calib), 512), observer=mixed_cfg.algorithm().weight_observer,
                          extra=ptq_extra(mixed_cfg, p.calib), **budget, **info)
    label = f"mixed-a{act_bits}:{uniform.label().split(':', 1)[1]}"
    mixed = run_ptq(p.model, mixed_cfg, p.calib, p.test, p.key, fp32, ctx.out_dir, plan=search.plan, label=label,
                    **info, topk=p.topk, eval_batch_size=eval_batch_size, progress=ctx.progress,
                    log=ctx.log)
    mkey = dataclasses.replace(p.key, method=label)
    predicted = evaluate(mixed.model, p.calib, topk=(1,)).top1  # no evaluation image seen
    ctx.commit(mixed.rows + mixed_rows(mkey, search) + [
        mkey.row("predicted_top1", predicted, "%", basis="the mixed model's top-1 on the calibration images")])
    return mixed, search, predicted


def mixed_model(cfg: MixedExperiment, ctx: Context) -> dict[str, Any]:
    from quantbench.experiments.prepare import prepare
    from quantbench.experiments.ptq import run_ptq
    from quantbench.experiments.stages import pretrained_baseline

    p = prepare(cfg, ctx, train=True, calib=True)
    _, fp32, _ = pretrained_baseline(p, cfg, ctx)
    info = p.rebuild_info()
    kw = {**info, "topk": p.topk, "eval_batch_size": cfg.eval_batch_size, "progress": ctx.progress, "log": ctx.log}
    uniform = cfg.uniform(len(p.calib))
    uni = run_ptq(p.model, uniform, p.calib, p.test, p.key, fp32, ctx.out_dir, **kw)
    ctx.commit(uni.rows)
    budget = ({"budget_bytes": int(cfg.budget_kb * 1000)} if cfg.budget_kb is not None
              else {"average_bits": float(cfg.avg_bits)})
    mixed, search, predicted = quantize_mixed(p, uniform, fp32, ctx, budget=budget, bits=cfg.bits, metric=cfg.metric,
                                              eval_batch_size=cfg.eval_batch_size)
    label = mixed.record["method"]
    size = (ctx.out_dir / "model_fp32.pt").stat().st_size
    return {"model": p.loaded.label, "data": cfg.data, "split": p.split, "n_images": fp32.n_images, "method": label,
            "fp32": {"top1": fp32.top1, "top5": fp32.topk.get(5), "ci": fp32.ci, "size_bytes": size},
            "quant": mixed.record["quant"], "drop": mixed.record["drop"],
            "uniform": {"method": uni.record["method"], **uni.record["quant"], "drop": uni.record["drop"]},
            "mixed": {"bits": search.choice.bits, "average_bits": search.choice.average_bits,
                      "predicted_damage": search.choice.predicted_damage, "metric": cfg.metric,
                      "predicted_top1": predicted, "budget": search.budget, "table": search.table()}}


register_kind("mixed", MixedExperiment, mixed_model, "mixed-precision weights under a size budget vs uniform PTQ")
