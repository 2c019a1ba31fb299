"""Choosing where low-bit activations meet joins: 8-bit join inputs or the activations' own bits.

Why a choice and not a rule: below 8-bit activations, :func:`~quantbench.quant.prepare.prepare` can
quantize the inputs of residual adds, concatenations, products and pooling at 8 bits (``joins="int8"``,
what the published low-bit records and the integer kernels' requantizing epilogues do) or at the
activations' bits (``"same"``). Measured at W4A4 (docs/benchmarks/ptq.md): 8-bit join inputs win by
4.9 points at round to nearest on the shared ResNet-20, 3.8 on the MobileNet hold-out, tie on the
bottleneck hold-out - and *lose* 6.5 on the first hold-out CNN (dense concatenations, squeeze-and-
excitation), where QDrop then loses 2.6 points more too. No placement is best for every network, so
``auto`` measures both on the model at hand.

How: each placement is prepared and calibrated (the algorithm's own observers: its starting point)
and compared with the float model on the calibration images by the mean KL divergence of the
predictions, which needs no labels and is smooth where top-1 on a few hundred images is not. The
lower one is kept (within 1% keeps ``"int8"``, so that a near-tie cannot flip between machines). The
cost is one more calibration and three passes over the calibration images (float and both placements):
a few seconds on the models above. On all four models measured at W4A4, the placement with the lower
calibration KL is also the one with the better held-out top-1 after QDrop (docs/benchmarks/ptq.md).

Example:
    >>> qm, note = choose_joins(model, parse_scheme("w4a4"), calib)  # doctest: +SKIP
    >>> note  # doctest: +SKIP
    "same (auto: calibration KL 0.615 with join inputs at the activations' bits, 1.4 at 8 bits, on 512 images)"
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantbench.quant.bias_correction import collect_images, model_device
from quantbench.quant.prepare import QuantizedModel, calibrate, prepare
from quantbench.quant.spec import QuantPlan

__all__ = ["TIE", "calibration_kl", "choose_joins"]

TIE = 0.01  # "same" must beat "int8" by 1% of its KL: a near-tie keeps the published placement on every machine


def calibration_kl(qm: nn.Module, reference: torch.Tensor, images: torch.Tensor, batch_size: int = 128) -> float:
    """Mean KL divergence (nats per image) from the float predictions ``reference`` to ``qm``'s on ``images``.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x = torch.randn(8, 4)
        >>> round(calibration_kl(net, net(x).detach(), x), 6)
        0.0
    """
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out = qm(images[i: i + batch_size]).float()
            ref = reference[i: i + batch_size].float()
            total += float(F.kl_div(F.log_softmax(out, 1), F.log_softmax(ref, 1), log_target=True, reduction="sum"))
    return total / max(len(images), 1)


def choose_joins(float_model: nn.Module, plan: QuantPlan, calib: Any, *, n_images: int | None = 512,
                 batch_size: int = 64, progress: bool = False) -> tuple[QuantizedModel, str]:
    """``float_model`` prepared and calibrated with the join placement that better matches it, and why.

    Args:
        float_model: The float model ``prepare`` receives (unchanged).
        plan: The plan to place; only its ``joins`` is chosen. A plan whose activations have 8 bits
            or more (or are dynamic) has nothing to choose: it is prepared and calibrated as it is.
        calib: Calibration images (anything :func:`~quantbench.quant.prepare.calibrate` takes).
        n_images: Calibration images to use, for calibrating and for comparing.
        batch_size: Calibration batch size.
        progress: Calibration bars on stderr.

    Returns:
        ``(qm, note)``: the calibrated model in quantized mode (``qm.plan.joins`` is the choice) and the
        sentence a run records, e.g. ``"int8 (auto: calibration KL 0.437 at 8 bits, 0.637 with join
        inputs at the activations' bits, on 500 images)"``; ``""`` where there was nothing to choose
        (8-bit activations, or a model without joins: a chain of convolutions, ReLUs and max pools).
    """
    first = prepare(float_model, plan.replace(joins="int8"))  # a plan of 8-bit activations stays as it was
    layer_names = {info.name for info in first.layers}
    if not plan.has_low_bit_joins or all(set(s["consumers"]) <= layer_names for s in first.act_sites.values()):
        # 8-bit activations, or no add, concatenation, product or average pool: both placements are one model
        return calibrate(first, calib, n_images=n_images, batch_size=batch_size, progress=progress), ""
    images = collect_images(calib, n_images).to(model_device(float_model))
    with torch.no_grad():
        reference = torch.cat([float_model(images[i: i + 128]) for i in range(0, len(images), 128)])
    tried: dict[str, tuple[QuantizedModel, float]] = {}
    for joins in ("int8", "same"):
        qm = calibrate(first if joins == "int8" else prepare(float_model, plan.replace(joins=joins)), images,
                       batch_size=batch_size, progress=progress)
        qm.set_mode("quant")
        tried[joins] = (qm, calibration_kl(qm, reference, images))
    best = "same" if tried["same"][1] < (1.0 - TIE) * tried["int8"][1] else "int8"
    other = "same" if best == "int8" else "int8"
    where = {"int8": "at 8 bits", "same": "with join inputs at the activations' bits"}
    note = (f"{best} (auto: calibration KL {tried[best][1]:.3g} {where[best]}, {tried[other][1]:.3g} "
            f"{where[other]}, on {len(images)} images)")
    return tried[best][0], note
