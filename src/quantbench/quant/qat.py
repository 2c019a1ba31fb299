"""Quantization-aware training: start from a PTQ model, then train weights and step sizes together.

Why start from PTQ: a calibrated starting point (MSE ranges, or AdaRound) is already close,
so a few epochs of fine-tuning recover what post-training quantization could not; training
from random scales would need the whole schedule again.

What is trained (the same :func:`~quantbench.train.fit` loop, history and plots as FP32):

* the (BN-folded) conv/linear weights, through straight-through fake quantization;
* every weight and activation step size, with LSQ's gradient (Esser et al. 2020) or, for
  activations, PACT's clipping-bound gradient (Choi et al. 2018): ``act_grad="pact"``;
* BatchNorm is folded into the conv weights before training (statistics frozen from the
  first step; see docs/decisions.md): the folded weights are what integer kernels run.

Any bits 2..8, uniform or mixed (a :class:`~quantbench.quant.spec.QuantPlan` from
:mod:`quantbench.quant.mixed`). The result is an ordinary calibrated
:class:`~quantbench.quant.prepare.QuantizedModel`: it saves, packs, exports and deploys like a PTQ one.

Example:
    >>> qm, hist = quantize_qat(model, QATConfig(scheme="w4a4"), calib, train, val)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from quantbench.config import TrainConfig
from quantbench.errors import QuantbenchError
from quantbench.quant.prepare import QuantizedModel
from quantbench.quant.ptq import PTQConfig, quantize_ptq
from quantbench.quant.spec import QuantPlan

__all__ = ["QATConfig", "make_trainable", "quantize_qat"]

ACT_GRADS = ("lsq", "pact")


@dataclass(frozen=True)
class QATConfig:
    """Everything that defines a QAT run (stored with its results).

    Attributes:
        scheme: ``wXaY`` (weights and activations 2..8 bits) unless ``plan`` is given.
        init: the PTQ algorithm giving the starting point (``mse``, ``adaround``, ...).
        first_last: ``same`` | ``int8`` | ``fp32`` policy for the first and last layers.
        act_grad: ``lsq`` or ``pact`` for the activation step sizes.
        learn_scales: train step sizes (False: fixed PTQ scales, weights only).
        calib_size: images calibrating the starting point.
        adaround_iters: when ``init`` uses AdaRound.
        train: epochs, batch size, optimiser, learning rate (fine-tuning: small lr).
    """

    scheme: str = "w4a4"
    init: str = "mse"
    first_last: str = "same"
    act_grad: str = "lsq"
    learn_scales: bool = True
    calib_size: int = 512
    adaround_iters: int = 500
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=1e-3, optimizer="adamw",
                                                                   batch_size=64, weight_decay=0.0))

    def ptq(self) -> PTQConfig:
        return PTQConfig(scheme=self.scheme, algo=self.init, first_last=self.first_last, calib_size=self.calib_size,
                         adaround_iters=self.adaround_iters)

    def label(self, plan: QuantPlan | None = None) -> str:
        base = "mixed" if plan is not None and plan.overrides else self.scheme
        parts = [base, "qat"]
        if self.act_grad != "lsq":
            parts.append(self.act_grad)
        if self.first_last != "same":
            parts.append(f"fl{self.first_last}")
        return "-".join(parts)


def make_trainable(qm: QuantizedModel, *, act_grad: str = "lsq", learn_scales: bool = True) -> QuantizedModel:
    """Turn a calibrated model's step sizes into parameters (LSQ / PACT) and fix every quantizer's mode.

    Raises:
        QuantbenchError: an unknown ``act_grad``, or a quantizer that cannot learn (dynamic, companded).
    """
    if act_grad not in ACT_GRADS:
        raise QuantbenchError(f"QAT: act_grad {act_grad!r} unknown; expected one of: {', '.join(ACT_GRADS)}")
    for name, fq in [*qm.weight_quantizers(), *qm.act_quantizers()]:
        if fq.spec.dynamic or fq.spec.companding != "none":
            raise QuantbenchError(f"QAT: quantizer {name} ({fq.spec.short()}) cannot be trained; use a static, "
                                  "uniform scheme such as w4a4")  # fmt: skip
    if learn_scales:
        for _, fq in qm.weight_quantizers():
            fq.make_learnable("lsq")
        for _, fq in qm.act_quantizers():
            fq.make_learnable(act_grad)
    qm.set_mode("quant")
    return qm


def quantize_qat(
    model: nn.Module,
    cfg: QATConfig,
    calib: Any,
    train_data: Any,
    val_data: Any | None = None,
    *,
    plan: QuantPlan | None = None,
    progress: bool = False,
    start: QuantizedModel | None = None,
) -> tuple[QuantizedModel, Any, QuantizedModel]:
    """PTQ start, then quantization-aware fine-tuning.

    Args:
        model: the float model (not modified).
        cfg: scheme, starting algorithm, gradients, training settings.
        calib: calibration images for the starting point.
        train_data: fine-tuning images with labels.
        val_data: per-epoch validation (optional).
        plan: a per-layer plan (mixed precision) instead of ``cfg.scheme``.
        progress: tqdm bars.
        start: an already quantized model to fine-tune (a PTQ result); ``calib`` is then unused.

    Returns:
        ``(qat_model, history, ptq_start)``: the trained model, the training history (with
        wall-clock time) and a frozen copy of the starting point (for the PTQ-vs-QAT rows).
    """
    from quantbench.train import fit

    if start is None:
        start = quantize_ptq(model, cfg.ptq(), calib, plan=plan)
    ptq_start = copy.deepcopy(start).eval()
    qm = make_trainable(copy.deepcopy(start), act_grad=cfg.act_grad, learn_scales=cfg.learn_scales)
    history = fit(qm, train_data, val_data, cfg.train, progress=progress)
    qm.eval()
    return qm, history, ptq_start
