"""Accuracy-controlled PTQ inside an experiment: choose on validation images, report on evaluation images.

Used by ``quantize --max-drop`` and by ``recommend``, so both choose the same way and store the
same rows: the chosen model's accuracy and paired drop on the evaluation images (which the
choice never saw), which layers stayed in float, the share of MACs they keep in float, and
every step of the search with its validation bound.

Example:
    >>> out = controlled_ptq(p, cfg, ptq, fp32, ctx)  # doctest: +SKIP
    >>> out.record["accuracy_control"]["float_layers"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from quantbench.errors import QuantbenchError

__all__ = ["CONTROLLED_TAG", "check_provable", "controlled_label", "controlled_ptq", "val_share"]

CONTROLLED_TAG = "+ac"
"""Suffix of an accuracy-controlled model's label (``w8a8:mse+ac``): the method, with layers in float."""


def controlled_label(method_label: str) -> str:
    """``w8a8:mse`` -> ``w8a8:mse+ac``."""
    return method_label + CONTROLLED_TAG


def val_share(cfg: Any, training: bool) -> float:
    """``cfg.val_fraction`` as :func:`~quantbench.experiments.prepare.prepare` takes it.

    ``val_fraction`` is a share of the images not used for training: when training images are split
    from ``--data``, that is ``val_fraction x (1 - train_fraction)`` of all of it.
    """
    if training and not getattr(cfg, "train_data", None):
        return cfg.val_fraction * (1.0 - cfg.train_fraction)
    return cfg.val_fraction


def check_provable(p: Any, cfg: Any) -> None:
    """Refuse before any training or calibration when ``p.val`` is too small to prove ``cfg.max_drop`` at any accuracy."""
    from quantbench.quant.accuracy_control import smallest_provable_drop

    n = len(p.val) if p.val is not None else 0
    floor = smallest_provable_drop(n, cfg.confidence, 0.5) if n else float("inf")
    if cfg.max_drop < floor:
        raise QuantbenchError(f"config: max_drop {cfg.max_drop:g} points cannot be proven on {n} validation images "
                              f"(even a model identical to FP32 gets an upper bound of at least {math.ceil(floor * 100) / 100:.2f}); "
                              "use more images (--val-fraction, more --data) or a larger --max-drop")


def controlled_ptq(p: Any, cfg: Any, ptq: Any, fp32: Any, ctx: Any, *, fp32_val: Any = None) -> Any:
    """Run :func:`~quantbench.quant.accuracy_control.quantize_with_accuracy_control` on ``p.val`` and record the
    chosen model on ``p.test`` beside ``fp32`` (a :class:`~quantbench.experiments.ptq.PTQOutcome`, not committed).

    ``cfg`` carries the :class:`~quantbench.experiments.options.AccuracyControl` fields and ``eval_batch_size``.
    """
    from quantbench.experiments.ptq import ptq_extra, record_quantized
    from quantbench.measure.accuracy import evaluate
    from quantbench.measure.macs import count_macs
    from quantbench.quant.accuracy_control import quantize_with_accuracy_control

    if p.val is None:
        raise QuantbenchError("accuracy control needs a validation split (val_fraction > 0)")
    fp32_val = fp32_val or evaluate(p.model, p.val, topk=(1,), batch_size=cfg.eval_batch_size)
    ctrl = quantize_with_accuracy_control(p.model, ptq, p.calib, p.val, max_drop=cfg.max_drop,
                                          confidence=cfg.confidence, max_float_layers=cfg.max_float_layers,
                                          fp32_val=fp32_val, batch_size=cfg.eval_batch_size, progress=ctx.progress,
                                          log=ctx.log)
    label = controlled_label(ptq.label())
    out = record_quantized(ctrl.model, label, p.test, p.key, fp32, ctx.out_dir, **p.rebuild_info(), topk=p.topk,
                           eval_batch_size=cfg.eval_batch_size, progress=ctx.progress,
                           extra={**ptq_extra(ptq, p.calib), "accuracy_control": ctrl.as_dict()})
    macs = count_macs(p.model, p.input_shape)
    float_macs = sum(macs.by_module.get(name, 0) for name in ctrl.float_layers)
    share = float_macs / macs.per_image_macs if macs.per_image_macs else 0.0
    best = ctrl.best
    key = dataclasses.replace(p.key, method=label)
    info = {"max_drop": ctrl.max_drop, "confidence": ctrl.confidence, "met": ctrl.met, "n_val": fp32_val.n_images}
    out.rows += [
        key.row("float_layers", len(ctrl.float_layers), "count", layers=list(ctrl.float_layers), **info),
        key.row("float_macs_share", 100.0 * share, "%", basis="MACs of the layers left in float / all MACs"),
        key.row("val_top1_drop_upper", best.upper_bound, "points", drop_points=best.drop_points, split="val", **info),
    ]
    if not ctrl.met:
        ctx.log(f"warning: max_drop {cfg.max_drop:g} not reached on {fp32_val.n_images} validation images; "
                f"the best model tried ({len(best.float_layers)} layer(s) in float) has an upper bound of "
                f"{best.upper_bound:.2f} points")
    out.record["method"] = label
    out.record["accuracy_control"] = {**ctrl.as_dict(), "float_macs_share": share,
                                      "val_drop_points": best.drop_points, "val_upper_bound": best.upper_bound,
                                      "n_val": fp32_val.n_images}
    return out
