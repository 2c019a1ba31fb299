"""QAT and mixed-precision experiments: the rows ``quantbench qat``, ``mixed`` and ``run`` store.

Every variant (FP32, the PTQ starting point, QAT, uniform and mixed PTQ) is evaluated on the
same images and saved packed through :func:`~quantbench.experiments.ptq.record_quantized`, so
the accuracy-vs-size Pareto plot compares like with like.

Example:
    >>> out = search_mixed(model, calib, budget_bytes=170_000)  # doctest: +SKIP
    >>> out.plan.overrides["conv1"].weight.bits  # doctest: +SKIP
    8
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from quantbench.config import TrainConfig
from quantbench.errors import QuantbenchError
from quantbench.experiments.ptq import PTQOutcome, record_quantized
from quantbench.experiments.records import RowKey, history_rows
from quantbench.quant.mixed import BitChoice, LayerBits, bit_sensitivity, mixed_plan, solve_bits, weight_bytes
from quantbench.quant.prepare import prepare
from quantbench.quant.qat import QATConfig, quantize_qat
from quantbench.quant.save import save_quantized
from quantbench.quant.spec import QuantPlan, parse_scheme
from quantbench.store import Result

__all__ = ["MixedSearch", "QATOutcome", "fp32_epoch_seconds", "mixed_rows", "qat_extra", "run_qat", "search_mixed"]


# ----------------------------------------------------------------------------- mixed precision


@dataclass
class MixedSearch:
    """A mixed-precision plan and how it was found."""

    plan: QuantPlan
    choice: BitChoice
    sensitivity: list[LayerBits]
    predicted_file_bytes: int
    budget: dict[str, Any]
    search_s: float

    def table(self) -> list[dict[str, Any]]:
        """Per layer: parameters, chosen bits, predicted damage at each candidate."""
        return [{"layer": s.layer, "kind": s.kind, "params": s.numel, "bits": self.choice.bits[s.layer],
                 "damage": s.damage[self.choice.bits[s.layer]],
                 "damage_by_bits": {str(b): d for b, d in s.damage.items()}} for s in self.sensitivity]


def _file_bytes(model: nn.Module, plan: QuantPlan, model_name: str | None, model_kwargs: dict[str, Any] | None,
                input_shape: tuple[int, ...] | None, extra: dict[str, Any] | None = None) -> int:
    """Exact size of the packed file of ``plan`` (no calibration needed: weights set their own scales)."""
    qm = prepare(model, plan)
    for _, fq in qm.act_quantizers():
        fq.calibrated = True  # placeholder parameters: the file's size does not depend on their values
    with tempfile.TemporaryDirectory() as tmp:
        return save_quantized(qm, Path(tmp) / "size.qbm", model_name=model_name, model_kwargs=model_kwargs,
                              input_shape=input_shape, extra=extra)


def search_mixed(model: nn.Module, calib: Any, *, budget_bytes: int | None = None, average_bits: float | None = None,
                 bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8), act_bits: int = 8, metric: str = "mse",
                 n_images: int = 256, observer: str = "mse", model_name: str | None = None,
                 model_kwargs: dict[str, Any] | None = None,
                 input_shape: tuple[int, ...] | None = None, extra: dict[str, Any] | None = None) -> MixedSearch:
    """Sensitivity per layer and bit-width, then the best bits under the budget.

    ``budget_bytes`` is the size of the WHOLE saved file (packed weights, scales, biases,
    header): the weight budget is the file budget minus the exact overhead of this model's
    file, and the plan is re-solved with a smaller weight budget until the real file fits.
    ``extra``: the metadata the final file will carry (it counts against the budget too).
    """
    t0 = time.perf_counter()
    sens = bit_sensitivity(model, calib, bits=bits, metric=metric, n_images=n_images, weight_observer=observer)
    if average_bits is not None:
        choice = solve_bits(sens, average_bits=average_bits, metric=metric)
        plan = mixed_plan(choice, act_bits=act_bits, weight_observer=observer, act_observer=observer)
        size = _file_bytes(model, plan, model_name, model_kwargs, input_shape, extra)
        return MixedSearch(plan, choice, sens, size, {"average_bits": average_bits}, time.perf_counter() - t0)
    if budget_bytes is None:
        raise QuantbenchError("mixed precision: give a budget (--budget-kb or --avg-bits)")
    top = max(bits)
    full = {s.layer: top for s in sens}
    full_plan = mixed_plan(BitChoice(full, 0.0, 0, float(top), metric), act_bits=act_bits)
    overhead = _file_bytes(model, full_plan, model_name, model_kwargs, input_shape, extra) - sum(
        weight_bytes(s.numel, top) for s in sens)
    weight_budget = budget_bytes - overhead
    for _ in range(6):
        if weight_budget <= 0:
            break
        choice = solve_bits(sens, budget_bytes=int(weight_budget), metric=metric)
        plan = mixed_plan(choice, act_bits=act_bits, weight_observer=observer, act_observer=observer)
        size = _file_bytes(model, plan, model_name, model_kwargs, input_shape, extra)
        if size <= budget_bytes:
            return MixedSearch(plan, choice, sens, size, {"file_bytes": budget_bytes}, time.perf_counter() - t0)
        weight_budget -= size - budget_bytes
    low = min(bits)
    smallest = _file_bytes(model, mixed_plan(BitChoice({s.layer: low for s in sens}, 0.0, 0, float(low), metric),
                                             act_bits=act_bits), model_name, model_kwargs, input_shape, extra)
    raise QuantbenchError(f"mixed precision: a {budget_bytes:,}-byte file is not reachable; the smallest file with "
                          f"{low}-bit weights everywhere is {smallest:,} bytes")


def mixed_rows(key: RowKey, search: MixedSearch) -> list[Result]:
    """Per-layer chosen bits and predicted damage, plus the plan's totals."""
    rows = []
    for i, t in enumerate(search.table()):
        info = {"layer": t["layer"], "index": i, "kind": t["kind"], "params": t["params"],
                "damage_by_bits": t["damage_by_bits"], "sensitivity_metric": search.choice.metric}
        rows.append(key.row("layer_bits", t["bits"], "bits", **info))
        rows.append(key.row("layer_damage", t["damage"], search.choice.metric, **info))
    rows.append(key.row("average_weight_bits", search.choice.average_bits, "bits"))
    rows.append(key.row("predicted_damage", search.choice.predicted_damage, search.choice.metric,
                        note="sum of per-layer damages (additivity assumption)"))
    rows.append(key.row("mixed_search_s", search.search_s, "s", budget=search.budget))
    return rows


# ----------------------------------------------------------------------------- QAT


@dataclass
class QATOutcome:
    """The PTQ start and the QAT result, recorded; training history and timings."""

    ptq: PTQOutcome
    qat: PTQOutcome
    history: Any
    fp32_epoch_s: float | None
    rows: list[Result] = field(default_factory=list)
    fp32_finetuned: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        qat_epoch = self.history.wall_s / max(len(self.history.epochs), 1)
        return {"method": self.qat.record["method"], "quant": self.qat.record["quant"], "drop": self.qat.record["drop"],
                "ptq": {"method": self.ptq.record["method"], **self.ptq.record["quant"], "drop": self.ptq.record["drop"]},
                "train_time_s": self.history.wall_s, "qat_epoch_s": qat_epoch, "fp32_epoch_s": self.fp32_epoch_s,
                "qat_vs_fp32_epoch_time": qat_epoch / self.fp32_epoch_s if self.fp32_epoch_s else None,
                "fp32_finetuned": self.fp32_finetuned,
                "epochs": [dict(e) for e in self.history.epochs]}


def qat_extra(cfg: QATConfig) -> dict[str, Any]:
    """The metadata a QAT model's file carries (also what a size budget must count)."""
    return {"qat": {**asdict(cfg), "train": asdict(cfg.train)}}


def fp32_epoch_seconds(model: nn.Module, train_data: Any, cfg: TrainConfig) -> float:
    """Wall-clock time of ONE FP32 training epoch of ``model`` on the same data and settings (a copy)."""
    from quantbench.train import fit

    hist = fit(copy.deepcopy(model), train_data, None, TrainConfig(**{**asdict(cfg), "epochs": 1}))
    return hist.wall_s


def run_qat(model: nn.Module, cfg: QATConfig, calib: Any, train_data: Any, eval_data: Any, base: RowKey,
            fp32_eval: Any, out_dir: Path, *, plan: QuantPlan | None = None, model_name: str | None = None,
            model_kwargs: dict[str, Any] | None = None, input_shape: tuple[int, int, int] | None = None,
            topk: int = 5, eval_batch_size: int = 256, progress: bool = False, time_fp32: bool = True,
            val_data: Any = None, fp32_epoch_s: float | None = None, start_label: str | None = None,
            fp32_finetune: bool = False) -> QATOutcome:
    """PTQ start -> QAT fine-tuning; rows for both (same images as FP32), history and timings.

    ``time_fp32``: time one FP32 epoch on the same data (for QAT-vs-FP32 training cost) unless
    ``fp32_epoch_s`` (e.g. from the FP32 training of the same run) is given. ``start_label``
    names the PTQ start's rows (default ``<scheme>-<init>``).

    ``fp32_finetune``: also fine-tune the FLOAT model with the same schedule on the same images
    (label ``fp32-finetuned``) - the fair reference when the fine-tuning images differ from
    the original training data (QAT then also adapts to them, which is not quantization
    recovery); its measured epoch time is the FP32 training-time baseline.
    """
    if plan is None:
        parse_scheme(cfg.scheme)  # validates before any work
    qm, history, start = quantize_qat(model, cfg, calib, train_data, val_data, plan=plan, progress=progress)
    kw = {"model_name": model_name, "model_kwargs": model_kwargs, "input_shape": input_shape, "topk": topk,
          "eval_batch_size": eval_batch_size, "progress": progress}
    ptq_label = start_label or (cfg.ptq().label() if plan is None else f"mixed:{cfg.init}")
    ptq_out = record_quantized(start, ptq_label, eval_data, base, fp32_eval, out_dir,
                               extra={"ptq": asdict(cfg.ptq())}, **kw)
    label = cfg.label(plan)
    qat_out = record_quantized(qm, label, eval_data, base, fp32_eval, out_dir,
                               extra=qat_extra(cfg), **kw)
    for out in (ptq_out, qat_out):  # what quantizing the start chose on this model (join placement); QAT keeps it
        out.record["choices"] = dict(start.notes)
    key = RowKey(base.model, base.data, label, "torch")
    rows = ptq_out.rows + qat_out.rows + history_rows(key, history)
    ft_record = None
    if fp32_finetune:
        from quantbench.experiments.records import accuracy_rows, drop_row
        from quantbench.measure.accuracy import evaluate, paired_difference
        from quantbench.train import fit

        ft = copy.deepcopy(model)
        ft_hist = fit(ft, train_data, val_data, cfg.train, progress=progress)
        ft.eval()
        ft_ev = evaluate(ft, eval_data, topk=(1, topk), batch_size=eval_batch_size)
        ft_key = RowKey(base.model, base.data, "fp32-finetuned", "torch")
        rows += accuracy_rows(ft_key, ft_ev, "test") + history_rows(ft_key, ft_hist) + [
            drop_row(ft_key, paired_difference(fp32_eval.correct, ft_ev.correct), "test")]
        vs = paired_difference(ft_ev.correct, qat_out.eval.correct).as_dict()
        rows.append(key.row("top1_drop_vs_fp32_finetuned", -vs["diff_points"] + 0.0, "points",
                            ci_low=-vs["ci_high"] + 0.0, ci_high=-vs["ci_low"] + 0.0, p_value=vs["p_value"],
                            n_images=vs["n"]))
        fp32_epoch_s = ft_hist.wall_s / max(len(ft_hist.epochs), 1)
        ft_record = {"top1": ft_ev.top1, "ci": ft_ev.ci, "train_time_s": ft_hist.wall_s,
                     "qat_drop_vs_finetuned": {"top1_points": -vs["diff_points"] + 0.0, "ci_low": -vs["ci_high"] + 0.0,
                                               "ci_high": -vs["ci_low"] + 0.0, "p_value": vs["p_value"]}}
        time_fp32 = False
    fp32_s = fp32_epoch_s if fp32_epoch_s is not None else (
        fp32_epoch_seconds(model, train_data, cfg.train) if time_fp32 else None)
    qat_epoch = history.wall_s / max(len(history.epochs), 1)
    rows.append(key.row("epoch_time_s", qat_epoch, "s", what="mean QAT epoch"))
    if fp32_s is not None:
        if fp32_epoch_s is None:  # timed here; otherwise FP32 training rows already say it
            rows.append(RowKey(base.model, base.data, "fp32", "torch").row(
                "epoch_time_s", fp32_s, "s", what="one FP32 epoch, same data and settings"))
        rows.append(key.row("qat_vs_fp32_epoch_time", qat_epoch / fp32_s, "x"))
    return QATOutcome(ptq_out, qat_out, history, fp32_s, rows, ft_record)
