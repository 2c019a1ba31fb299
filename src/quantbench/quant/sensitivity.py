"""Per-layer sensitivity: how much each layer alone suffers from quantization.

For every conv/linear, only that layer's quantizers (its weight and its input activation)
are switched on; we record the SQNR of the layer's output against the float network and
the top-1 of the whole network. The most sensitive layers are the candidates for higher
precision (the first/last-layer policy, mixed precision).

Every row also carries the float network's top-1 on exactly the same images
(``fp32_top1``): a row's top-1 only means something beside it. Measured on other images
(the full evaluation split), noise made "only this layer quantized" read as better than
FP32. The float reference is the model with every quantizer off - for plain PTQ that is
the FP32 model; after AdaRound, bias correction or QAT it is the float network with those
adjusted weights, which is exactly what the other layers run in each row.

Note: an input quantizer shared with another consumer (a residual shortcut reading the
same value) is switched on for both, as it would be in the deployed graph.

Example:
    >>> rows = layer_sensitivity(qm, eval_images, labels)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from quantbench.progress import bar
from quantbench.quant.prepare import QuantizedModel, iterate_batches


@dataclass(frozen=True)
class LayerSensitivity:
    """SQNR (dB) of a layer's output and the model's top-1 when only that layer is quantized.

    ``fp32_top1`` is the float model's top-1 on the same ``n_images`` images (the row's baseline).
    """

    layer: str
    kind: str
    spec: str
    sqnr_db: float
    top1: float
    params: int
    fp32_top1: float = float("nan")
    n_images: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sqnr_db(ref: torch.Tensor, noisy: torch.Tensor) -> float:
    noise = float(((ref - noisy) ** 2).sum())
    signal = float((ref**2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def _capture(
    qm: QuantizedModel, layer: str, x: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the layer's output, the model's logits) over all of ``x``."""
    out: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    handle = qm.layer(layer).register_forward_hook(lambda _m, _i, o: out.append(o.detach()))
    try:
        with torch.no_grad():
            for xb in iterate_batches(x, None, batch_size):
                logits.append(qm(xb))
    finally:
        handle.remove()
    return torch.cat(out), torch.cat(logits)


def layer_sensitivity(
    qm: QuantizedModel, data: Any, *, n_images: int | None = 1000, batch_size: int = 256, progress: bool = False
) -> list[LayerSensitivity]:
    """Per-layer SQNR and top-1 with only that layer quantized (``qm`` must be calibrated).

    Args:
        qm: A calibrated :class:`QuantizedModel`; its quantizer modes are restored afterwards.
        data: Evaluation data with labels (data set view or ``(images, labels)``).
        n_images: Cap on images used (sensitivity costs one evaluation per layer).
        progress: A bar of layers on stderr (two passes over the images per layer).

    Returns:
        One row per conv/linear, each with the float top-1 on the same images beside its own.
    """
    if hasattr(data, "tensors"):
        x, y = data.tensors()
    else:
        x, y = data
    if n_images is not None:
        x, y = x[:n_images], y[:n_images]
    modes = {id(fq): fq.mode for _, fq in [*qm.act_quantizers(), *qm.weight_quantizers()]}
    weight_fq = dict(qm.weight_quantizers())
    act_fq = dict(qm.act_quantizers())
    labels = torch.as_tensor(y)
    out = []
    fp32_top1 = float("nan")
    try:
        for info in bar(qm.layers, desc="sensitivity", unit="layer", enabled=progress):
            qm.set_mode("off")
            ref, ref_logits = _capture(qm, info.name, x, batch_size)
            if math.isnan(fp32_top1):  # the float logits are the same in every layer's reference pass
                fp32_top1 = 100.0 * float((ref_logits.argmax(1) == labels).float().mean())
            if info.name in weight_fq:
                weight_fq[info.name].mode = "quant"
            if info.input_quantizer:
                act_fq[info.input_quantizer].mode = "quant"
            noisy, logits = _capture(qm, info.name, x, batch_size)
            top1 = 100.0 * float((logits.argmax(1) == labels).float().mean())
            params = sum(p.numel() for p in qm.layer(info.name).parameters(recurse=False))
            out.append(LayerSensitivity(info.name, info.kind, info.spec.short(), _sqnr_db(ref, noisy), top1, params,
                                        fp32_top1, len(x)))
    finally:
        for _, fq in [*qm.act_quantizers(), *qm.weight_quantizers()]:
            fq.mode = modes[id(fq)]
    return out
