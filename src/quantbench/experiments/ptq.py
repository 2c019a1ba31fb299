"""One PTQ experiment: quantize, save packed, evaluate against FP32 on the same images, report.

Shared by ``quantbench quantize`` and the PTQ stage of ``quantbench run`` so both produce the
same rows: accuracy with CIs, the paired drop vs FP32, bytes of the packed file, and the
per-layer sensitivity table.

Example:
    >>> out = run_ptq(model, PTQConfig("w8a8", "mse"), calib, test, key, fp32_eval, out_dir)  # doctest: +SKIP
    >>> out.record["quant"]["top1"]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from quantbench.experiments.records import RowKey, accuracy_rows, drop_row
from quantbench.measure.accuracy import EvalResult, evaluate, paired_difference
from quantbench.quant.ptq import PTQConfig, quantize_ptq
from quantbench.quant.save import save_quantized
from quantbench.quant.sensitivity import LayerSensitivity, layer_sensitivity
from quantbench.store import Result


@dataclass
class PTQOutcome:
    """Rows for the store, a JSON-friendly record, the artefact path and the model."""

    record: dict[str, Any]
    rows: list[Result] = field(default_factory=list)
    artifact: Path | None = None
    model: nn.Module | None = None
    sensitivity: list[LayerSensitivity] = field(default_factory=list)
    eval: EvalResult | None = None


def sensitivity_rows(key: RowKey, sens: list[LayerSensitivity]) -> list[Result]:
    """``layer_sqnr_db`` and ``layer_only_top1`` per layer; each row's extra carries the float top-1 on the
    same images (``fp32_top1_same_images``, ``n_images``), the only baseline its top-1 can be read against."""
    rows = []
    for i, s in enumerate(sens):
        info = {"layer": s.layer, "index": i, "kind": s.kind, "spec": s.spec, "params": s.params,
                "fp32_top1_same_images": s.fp32_top1, "n_images": s.n_images}
        rows.append(key.row("layer_sqnr_db", s.sqnr_db if s.sqnr_db != float("inf") else None, "dB", **info))
        rows.append(key.row("layer_only_top1", s.top1, "%", **info))
    return rows


def run_ptq(model: nn.Module, cfg: PTQConfig, calib: Any, eval_data: Any, base: RowKey,
            fp32_eval: EvalResult, out_dir: Path, *, model_name: str | None = None,
            model_kwargs: dict[str, Any] | None = None, input_shape: tuple[int, int, int] | None = None,
            topk: int = 5, eval_batch_size: int = 256, sensitivity_images: int | None = 0,
            progress: bool = False, plan: Any = None, label: str | None = None,
            log: Callable[[str], None] | None = None) -> PTQOutcome:
    """Quantize ``model`` per ``cfg``, save it packed, evaluate it on ``eval_data`` beside FP32.

    Args:
        fp32_eval: The FP32 model's evaluation on exactly ``eval_data`` (for the paired drop).
        sensitivity_images: Images for the per-layer sensitivity table (0 skips it, None = all).
        plan: A per-layer plan (mixed precision) instead of ``cfg.scheme``; ``label`` names it.
        log: Where the choices quantizing made on this model are said (``joins: ...``); also recorded.
    """
    t0 = time.perf_counter()
    qm = quantize_ptq(model, cfg, calib, plan=plan, progress=progress)
    ptq_s = time.perf_counter() - t0
    n_calib = min(cfg.calib_size, len(calib)) if calib is not None else 0
    out = record_quantized(qm, label or cfg.label(), eval_data, base, fp32_eval, out_dir, model_name=model_name,
                           model_kwargs=model_kwargs, input_shape=input_shape, topk=topk,
                           eval_batch_size=eval_batch_size, sensitivity_images=sensitivity_images, progress=progress,
                           extra=ptq_extra(cfg, calib))
    key = RowKey(base.model, base.data, out.record["method"], "torch")
    choices = dict(qm.notes)  # what quantizing chose on this model (join placement)
    for what, why in choices.items() if log else ():
        log(f"{label or cfg.label()}: {what}: {why}")
    out.rows.append(key.row("ptq_time_s", ptq_s, "s", calib_images=n_calib, **choices))
    out.record["ptq"] = asdict(cfg.resolved())
    out.record["choices"] = choices
    out.record["quant"]["ptq_time_s"] = ptq_s
    return out


def ptq_extra(cfg: PTQConfig, calib: Any) -> dict[str, Any]:
    """The metadata a PTQ model's file carries (also what a size budget must count)."""
    return {"ptq": asdict(cfg.resolved()), "calib_images": min(cfg.calib_size, len(calib)) if calib is not None else 0}


def params_x_bits_bytes(qm: Any) -> float:
    """Sum over quantized weights of parameters x bits, in bytes: the size published studies quote.

    Example:
        >>> params_x_bits_bytes(qm)  # doctest: +SKIP
        67084.0
    """
    return sum(qm.layer(name).weight.numel() * fq.spec.bits for name, fq in qm.weight_quantizers()) / 8


def record_quantized(qm: Any, label: str, eval_data: Any, base: RowKey, fp32_eval: EvalResult, out_dir: Path, *,
                     model_name: str | None = None, model_kwargs: dict[str, Any] | None = None,
                     input_shape: tuple[int, int, int] | None = None, topk: int = 5, eval_batch_size: int = 256,
                     sensitivity_images: int | None = 0, progress: bool = False,
                     extra: dict[str, Any] | None = None) -> PTQOutcome:
    """Save a quantized model packed, evaluate it beside FP32 on the same images, and make its rows.

    Shared by PTQ, QAT and mixed precision, so every quantized variant gets the same rows:
    accuracy with CIs, the paired drop vs FP32, the packed file's bytes, optional sensitivity.
    """
    key = RowKey(base.model, base.data, label, "torch")
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / f"model_{label.replace(':', '_')}.qbm"
    size = save_quantized(qm, artifact, model_name=model_name, model_kwargs=model_kwargs, input_shape=input_shape,
                          extra=extra or {})
    ev = evaluate(qm, eval_data, topk=(1, topk), batch_size=eval_batch_size,
                  progress=f"eval {label}" if progress else False)
    paired = paired_difference(fp32_eval.correct, ev.correct)
    pxb = params_x_bits_bytes(qm)
    rows = accuracy_rows(key, ev, "test") + [
        drop_row(key, paired, "test"),
        key.row("size_bytes", size, "bytes", file=artifact.name),
        key.row("params_x_bits_bytes", pxb, "bytes", what="quantized weights: parameters x bits / 8 (what papers "
                "quote as model size; the file adds scales, biases and its header)"),
    ]
    sens: list[LayerSensitivity] = []
    if sensitivity_images != 0 and not qm.plan.is_fp32:
        sens = layer_sensitivity(qm, eval_data, n_images=sensitivity_images, batch_size=eval_batch_size,
                                 progress=progress)
        rows += sensitivity_rows(key, sens)
    pd = paired.as_dict()
    record = {
        "method": label,
        "quant": {"top1": ev.top1, "top5": ev.topk.get(5), "ci": ev.ci, "size_bytes": size,
                  "params_x_bits_bytes": pxb, "artifact": str(artifact)},
        "drop": {"top1_points": -pd["diff_points"], "ci_low": -pd["ci_high"], "ci_high": -pd["ci_low"],
                 "p_value": pd["p_value"]},
        "layers": [s.as_dict() for s in sens],
    }
    return PTQOutcome(record=record, rows=rows, artifact=artifact, model=qm, sensitivity=sens, eval=ev)
