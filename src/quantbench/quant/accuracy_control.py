"""Accuracy-controlled quantization: full INT8 first, then the costliest layers back to float until the
drop is provably within a target.

Why this shape (NNCF's ``quantize_with_accuracy_control`` and Intel Neural Compressor's tuning
do the same): a user who says "at most 0.3 points" wants the fastest model that keeps that
promise, not a per-layer bit search. The quantized model keeps every layer in INT8 unless
leaving it there breaks the promise; layers return to float one at a time, the one whose
quantization costs most first, and each step is re-quantized from scratch with the new plan so
the model that is checked is the model that is saved and deployed.

The promise is statistical. The drop is measured on a *validation* split that the caller keeps
apart from its evaluation images (selection never sees them), paired against FP32 on the same
images, and a step is accepted when the one-sided upper confidence bound of the drop is within
the target (Newcombe's paired interval at ``2 * confidence - 1``, whose upper end is the
one-sided bound). With few validation images even a perfect copy of FP32 cannot prove a small
target; :func:`smallest_provable_drop` says how small a target the split can prove, and the
search refuses up front when the target is below it.

Ranking: each layer's cost is the mean squared error of the logits (against the float model, on
the validation images) that disappears when only that layer's quantizers are switched off -
continuous, so it ranks reliably on a few hundred images where per-layer accuracy would be
mostly ties.

Example:
    >>> out = quantize_with_accuracy_control(model, PTQConfig("w8a8"), calib, val, max_drop=0.3)  # doctest: +SKIP
    >>> out.float_layers, out.met  # doctest: +SKIP
    (['layer1.0.conv1'], True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.measure.accuracy import EvalResult, PairedDifference, evaluate, paired_difference
from quantbench.quant.prepare import QuantizedModel, iterate_batches
from quantbench.quant.ptq import PTQConfig, quantize_ptq
from quantbench.quant.spec import FP32_LAYER

__all__ = ["ControlStep", "ControlledModel", "layer_costs", "quantize_with_accuracy_control",
           "smallest_provable_drop", "upper_drop_bound"]


def upper_drop_bound(fp32_correct: Any, quant_correct: Any, confidence: float = 0.95) -> tuple[float, PairedDifference]:
    """One-sided upper confidence bound of the top-1 drop (points, FP32 minus quantized), and the paired test.

    Example:
        >>> a = np.array([True] * 900 + [False] * 100)
        >>> round(upper_drop_bound(a, a)[0], 2)
        0.27
    """
    paired = paired_difference(fp32_correct, quant_correct, level=2 * confidence - 1)
    return -paired.ci_low, paired


def smallest_provable_drop(n_images: int, confidence: float = 0.95, accuracy: float = 0.9) -> float:
    """The bound a quantized model that agrees with FP32 on every one of ``n_images`` still gets.

    A target below it cannot be proven on that many validation images, however good the model.

    Example:
        >>> round(smallest_provable_drop(1000), 2)
        0.27
    """
    a = np.zeros(n_images, dtype=bool)
    a[: int(round(n_images * accuracy))] = True
    return upper_drop_bound(a, a, confidence)[0]


@dataclass(frozen=True)
class ControlStep:
    """One model tried: the layers in float, its validation drop and bound."""

    float_layers: tuple[str, ...]
    drop_points: float
    upper_bound: float
    met: bool

    def as_dict(self) -> dict[str, Any]:
        return {"float_layers": list(self.float_layers), "drop_points": self.drop_points,
                "upper_bound": self.upper_bound, "met": self.met}


@dataclass
class ControlledModel:
    """The result: the chosen model, the layers left in float, and every step taken."""

    model: QuantizedModel  # its ``plan`` names the float layers
    float_layers: list[str]
    met: bool
    max_drop: float
    confidence: float
    val_eval: EvalResult
    steps: list[ControlStep] = field(default_factory=list)
    costs: list[tuple[str, float]] = field(default_factory=list)

    @property
    def best(self) -> ControlStep:
        """The step with the lowest bound (the model returned when the target was not met)."""
        return min(self.steps, key=lambda s: (s.upper_bound, len(s.float_layers)))

    def as_dict(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "confidence": self.confidence, "met": self.met,
                "float_layers": list(self.float_layers), "steps": [s.as_dict() for s in self.steps],
                "layer_costs": [{"layer": n, "logit_mse_recovered": c} for n, c in self.costs]}


def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(xb) for xb in iterate_batches(x, None, batch_size)])


def layer_costs(qm: QuantizedModel, float_model: nn.Module, images: torch.Tensor, *, batch_size: int = 256,
                progress: bool = False) -> list[tuple[str, float]]:
    """Each quantized layer with the logit MSE (vs float) removed by switching off only its quantizers, costliest first.

    The layer's weight quantizer and its input quantizer are switched off together (an input quantizer
    shared with another consumer is switched off for both, as in :mod:`quantbench.quant.sensitivity`);
    quantizer modes are restored afterwards.
    """
    ref = _logits(float_model.eval(), images, batch_size)
    full = float(((_logits(qm, images, batch_size) - ref) ** 2).mean())
    weight_fq = dict(qm.weight_quantizers())
    act_fq = dict(qm.act_quantizers())
    layers = [i for i in qm.layers if not i.spec.is_fp32]
    costs = []
    from quantbench.progress import bar

    for info in bar(layers, desc="accuracy control: rank layers", unit="layer", enabled=progress):
        switched = [fq for fq in (weight_fq.get(info.name), act_fq.get(info.input_quantizer or "")) if fq is not None]
        modes = [fq.mode for fq in switched]
        for fq in switched:
            fq.mode = "off"
        try:
            err = float(((_logits(qm, images, batch_size) - ref) ** 2).mean())
        finally:
            for fq, mode in zip(switched, modes, strict=True):
                fq.mode = mode
        costs.append((info.name, full - err))
    return sorted(costs, key=lambda c: -c[1])


def _with_float(cfg_plan: Any, layers: list[str]) -> Any:
    return cfg_plan.replace(overrides={**cfg_plan.overrides, **{name: FP32_LAYER for name in layers}})


def quantize_with_accuracy_control(model: nn.Module, cfg: PTQConfig, calib: Any, val: Any, *, max_drop: float,
                                   confidence: float = 0.95, max_float_layers: int | None = None,
                                   fp32_val: EvalResult | None = None, batch_size: int = 256, progress: bool = False,
                                   log: Callable[[str], None] | None = None) -> ControlledModel:
    """Quantize ``model`` per ``cfg``; return layers to float, costliest first, until the drop is within ``max_drop``.

    Args:
        model: The float model (unchanged).
        cfg: The PTQ method every quantized layer keeps (e.g. ``w8a8:mse``).
        calib: Calibration images (never the validation images).
        val: Validation images with labels, kept apart from any evaluation images.
        max_drop: Largest acceptable top-1 drop in points; proven by the one-sided upper bound.
        confidence: Confidence of that bound.
        max_float_layers: Stop after this many layers in float (None: as many as there are).
        fp32_val: FP32's evaluation on exactly ``val`` (computed when absent).

    Returns:
        A :class:`ControlledModel`; ``met`` is False when no tried model proved the target (the model
        with the lowest bound is returned then, and the caller says so).

    Raises:
        QuantbenchError: ``max_drop`` negative or below what ``val`` can prove; ``confidence`` outside (0.5, 1).
    """
    log = log or (lambda m: None)
    if not (isinstance(max_drop, (int, float)) and np.isfinite(max_drop) and max_drop >= 0):
        raise QuantbenchError(f"config: max_drop {max_drop!r}: expected a number of points >= 0")
    if not 0.5 < confidence < 1:
        raise QuantbenchError(f"config: confidence {confidence!r}: expected a value in (0.5, 1)")
    fp32_val = fp32_val or evaluate(model, val, topk=(1,), batch_size=batch_size)
    floor = smallest_provable_drop(fp32_val.n_images, confidence, fp32_val.top1 / 100.0)
    if max_drop < floor:
        raise QuantbenchError(f"config: max_drop {max_drop:g} points cannot be proven on {fp32_val.n_images} "
                              f"validation images (even a model identical to FP32 gets an upper bound of "
                              f"{floor:.2f}); use more images or a larger max_drop")
    base_plan = cfg.plan()
    steps: list[ControlStep] = []

    def attempt(float_layers: list[str]) -> tuple[QuantizedModel, EvalResult, ControlStep]:
        qm = quantize_ptq(model, cfg, calib, plan=_with_float(base_plan, float_layers) if float_layers else None)
        ev = evaluate(qm, val, topk=(1,), batch_size=batch_size)
        bound, paired = upper_drop_bound(fp32_val.correct, ev.correct, confidence)
        step = ControlStep(tuple(float_layers), -paired.diff_points, bound, bound <= max_drop)
        steps.append(step)
        log(f"accuracy control: {len(float_layers)} layer(s) in float: drop {step.drop_points:+.2f} points, "
            f"upper bound {bound:.2f} (target {max_drop:g})")
        return qm, ev, step

    qm, ev, step = attempt([])
    best = (qm, ev, step)  # the lowest bound so far: what is returned when the target is never met
    costs: list[tuple[str, float]] = []
    chosen: list[str] = []
    if not step.met:
        x, _ = val.tensors() if hasattr(val, "tensors") else val
        costs = layer_costs(qm, model, torch.as_tensor(x), batch_size=batch_size, progress=progress)
        limit = len(costs) if max_float_layers is None else min(max_float_layers, len(costs))
        for name, _cost in costs[:limit]:
            chosen = [*chosen, name]
            qm, ev, step = attempt(chosen)
            if step.upper_bound < best[2].upper_bound or step.met:
                best = (qm, ev, step)
            if step.met:
                break
    qm, ev, step = best
    return ControlledModel(qm, list(step.float_layers), step.met, float(max_drop), confidence, ev, steps, costs)
