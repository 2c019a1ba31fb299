"""Quantization-aware training: start from a PTQ model, then train weights and step sizes together.

Why start from PTQ: a calibrated starting point (MSE ranges, or AdaRound) is already close,
so a few epochs of fine-tuning recover what post-training quantization could not; training
from random scales would need the whole schedule again.

What is trained (the same :func:`~quantbench.train.fit` loop, history and plots as FP32):

* the (BN-folded) conv/linear weights, through straight-through fake quantization;
* every weight and activation step size, with LSQ's gradient (Esser et al. 2020) or, for
  activations, PACT's clipping-bound gradient (Choi et al. 2018): ``act_grad="pact"``;
* BatchNorm, with a freeze schedule (``bn_freeze_epoch``): integer kernels run conv weights
  with BN folded in, so the FOLDED weight is what gets fake-quantized at every step. Until the
  freeze epoch, BN keeps learning: the conv runs with the folded-and-quantized weight scaled by
  the running statistics, the output is rescaled to batch statistics (which also update the
  running ones), as in Krishnamoorthi (2018) / PyTorch's ``ConvBn2d`` QAT module. From the
  freeze epoch on (0 = from the start) the running statistics are fixed and the layer is
  exactly the deployed folded conv. After training every layer is folded for good.

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

import torch
import torch.nn.functional as F
from torch import nn

from quantbench.config import TrainConfig
from quantbench.errors import QuantbenchError
from quantbench.quant.prepare import QConv2d, QuantizedModel
from quantbench.quant.ptq import PTQConfig, quantize_ptq
from quantbench.quant.spec import QuantPlan

__all__ = ["QATConfig", "QConvBn2d", "fold_bn_for_good", "make_trainable", "quantize_qat", "unfold_bn"]

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
        bn_freeze_epoch: BatchNorm statistics keep updating for this many epochs, then freeze
            (0: frozen from the start, i.e. plain folded weights).
        calib_size: images calibrating the starting point.
        adaround_iters: steps when ``init`` optimises rounding (AdaRound, BRECQ, QDrop); None: its default.
        train: epochs, batch size, optimiser, learning rate (fine-tuning: small lr).
    """

    scheme: str = "w4a4"
    init: str = "mse"
    first_last: str = "same"
    act_grad: str = "lsq"
    learn_scales: bool = True
    bn_freeze_epoch: int = 0
    calib_size: int = 512
    adaround_iters: int | None = None  # None: the init algorithm's own step count
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=1e-3, optimizer="adamw",
                                                                   batch_size=64, weight_decay=0.0))

    def ptq(self) -> PTQConfig:
        return PTQConfig(scheme=self.scheme, algo=self.init, first_last=self.first_last, calib_size=self.calib_size,
                         adaround_iters=self.adaround_iters)

    def label(self, plan: QuantPlan | None = None) -> str:
        base = "mixed" if plan is not None and plan.overrides else self.scheme
        parts = ["qat"]
        if self.act_grad != "lsq":
            parts.append(self.act_grad)
        if self.first_last != "same":
            parts.append(f"fl{self.first_last}")
        return f"{base}:{'-'.join(parts)}"


class QConvBn2d(QConv2d):
    """A quantized conv with its BatchNorm NOT yet folded for good (QAT before the BN freeze).

    ``weight``/``bias`` hold the raw conv parameters and ``bn`` the BatchNorm; the weight that
    is fake-quantized is always the folded one, ``weight * gamma / sqrt(running_var + eps)``.
    Training (not frozen): output rescaled from running to batch statistics, running statistics
    updated. Frozen or eval: exactly the folded conv with the running statistics.
    """

    bn: nn.BatchNorm2d

    def _factor(self) -> torch.Tensor:
        return self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(folded weight, folded bias) with the running statistics."""
        f = self._factor()
        bias = self.bias if self.bias is not None else torch.zeros_like(self.bn.running_mean)
        return self.weight * f.reshape(-1, 1, 1, 1), self.bn.bias + (bias - self.bn.running_mean) * f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and not self.bn_frozen):
            w, b = self.folded()
            return self._conv_forward(x, self.weight_fq(w), b)
        f = self._factor()
        w = self.weight_fq(self.weight * f.reshape(-1, 1, 1, 1))
        y = self._conv_forward(x, w, None) / f.reshape(1, -1, 1, 1)  # conv with the quantized folded weight
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return F.batch_norm(y, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                            training=True, momentum=self.bn.momentum if self.bn.momentum is not None else 0.1,
                            eps=self.bn.eps)


def unfold_bn(qm: QuantizedModel) -> int:
    """Turn every BN-folded quantized conv back into a :class:`QConvBn2d` (statistics learnable again).

    Uses the raw conv weight and BatchNorm that :func:`quantbench.quant.fold.fold_batchnorm`
    kept. Returns how many layers were unfolded.
    """
    n = 0
    for info in qm.layers:
        layer = qm.layer(info.name)
        saved = layer.__dict__.get("unfolded")
        if type(layer) is not QConv2d or saved is None:
            continue
        w, b, bn = saved
        new = QConvBn2d.__new__(QConvBn2d)
        new.__dict__ = layer.__dict__.copy()
        new._parameters = dict(layer._parameters)
        new._modules = dict(layer._modules)
        new.weight = nn.Parameter(w.clone())
        new.bias = nn.Parameter(b.clone())
        new.bn = copy.deepcopy(bn).train()
        new.bn_frozen = False
        parent_name, _, leaf = info.name.rpartition(".")
        setattr(qm.net.get_submodule(parent_name) if parent_name else qm.net, leaf, new)
        n += 1
    return n


def freeze_bn(qm: QuantizedModel) -> None:
    """Stop updating BatchNorm statistics (the layers then compute exactly the folded conv)."""
    for m in qm.modules():
        if isinstance(m, QConvBn2d):
            m.bn_frozen = True


def fold_bn_for_good(qm: QuantizedModel) -> int:
    """Replace every :class:`QConvBn2d` by the plain folded :class:`QConv2d` it computes."""
    n = 0
    for info in qm.layers:
        layer = qm.layer(info.name)
        if not isinstance(layer, QConvBn2d):
            continue
        with torch.no_grad():
            w, b = layer.folded()
        new = QConv2d.__new__(QConv2d)
        new.__dict__ = {k: v for k, v in layer.__dict__.items() if k != "bn_frozen"}
        new._parameters = dict(layer._parameters)
        new._modules = {k: v for k, v in layer._modules.items() if k != "bn"}
        new.weight = nn.Parameter(w.detach().clone())
        new.bias = nn.Parameter(b.detach().clone())
        parent_name, _, leaf = info.name.rpartition(".")
        setattr(qm.net.get_submodule(parent_name) if parent_name else qm.net, leaf, new)
        n += 1
    return n


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
    if cfg.bn_freeze_epoch < 0:
        raise QuantbenchError(f"QAT: bn_freeze_epoch must be >= 0, got {cfg.bn_freeze_epoch}")
    qm = make_trainable(copy.deepcopy(start), act_grad=cfg.act_grad, learn_scales=cfg.learn_scales)
    on_epoch = None
    if cfg.bn_freeze_epoch > 0 and unfold_bn(qm):
        def on_epoch(record: dict[str, float]) -> None:
            if record["epoch"] >= cfg.bn_freeze_epoch:
                freeze_bn(qm)

    history = fit(qm, train_data, val_data, cfg.train, progress=progress, on_epoch=on_epoch)
    fold_bn_for_good(qm)
    qm.eval()
    return qm, history, ptq_start
