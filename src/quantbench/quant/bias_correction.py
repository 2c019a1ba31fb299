"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2).

Why: weight rounding error ``eps = W_q - W`` is not zero-mean per output channel, so a
quantized layer's output is *biased*: ``E[W_q x] - E[W x] = eps E[x] != 0``. The shift adds
up through the network (ReLUs turn it into a change of which units fire) and is often the
largest part of the low-bit accuracy loss. Subtracting the measured per-channel shift from
the layer's bias removes it at zero run-time cost. The empirical variant used here measures
``E[y_q] - E[y]`` on calibration images, layer after layer in execution order, so each
correction already sees the corrected layers before it (and the activation quantizers, once
calibrated), rather than the analytic estimate from BatchNorm statistics.

The helpers below (float reference, layer taps, image collection) are shared with
:mod:`quantbench.quant.adaround`.

Example:
    >>> qm = calibrate(prepare(model, parse_scheme("w4a8")), calib)  # doctest: +SKIP
    >>> bias_correction(qm, model, calib, n_images=512)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from quantbench.errors import QuantbenchError
from quantbench.progress import bar, note
from quantbench.quant.fake import FakeQuant, broadcast_param
from quantbench.quant.fold import fold_batchnorm
from quantbench.quant.prepare import LayerInfo, QuantizedModel, iterate_batches

__all__ = ["bias_correction"]

_LAYERS = (nn.Conv2d, nn.Linear)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


def collect_images(data: Any, n_images: int | None, batch_size: int = 256) -> Tensor:
    """Up to ``n_images`` calibration images as one tensor (anything ``iterate_batches`` takes)."""
    if n_images is not None and n_images < 1:
        raise QuantbenchError(f"n_images must be >= 1 or None, got {n_images}")
    parts = [xb for xb in iterate_batches(data, n_images, batch_size)]
    if not parts:
        raise QuantbenchError("no images in the calibration data")
    return torch.cat(parts)


def float_reference(qm: QuantizedModel, float_model: nn.Module) -> fx.GraphModule:
    """The BN-folded float model whose layers match ``qm``'s, checked weight by weight.

    A rescue method compares each quantized layer with the *same* float layer, so the float
    model must be the one ``prepare`` received (the equalised one after CLE, for example).
    Each float weight, clipped to the quantizer's range, must lie within one quantization
    step of the prepared weight (clipped likewise), which holds for untouched, bias-corrected and AdaRound-ed weights
    but not for a different (e.g. un-equalised) model.

    Raises:
        QuantbenchError: A layer is missing, of another shape, or has other weights.
    """
    ref = fold_batchnorm(float_model).eval()
    for info in qm.layers:
        try:
            f = ref.get_submodule(info.name)
        except AttributeError:
            f = None
        q = qm.layer(info.name)
        if not isinstance(f, _LAYERS) or f.weight.shape != q.weight.shape:
            raise QuantbenchError(
                f"float model does not match the prepared model at layer {info.name!r} "
                f"({type(q).__name__} {tuple(q.weight.shape)}); pass the model that prepare() received"
            )
        wf, wq = f.weight.detach(), q.weight.detach()
        fq = getattr(q, "weight_fq", None)
        if isinstance(fq, FakeQuant) and fq.spec.companding == "none" and fq.calibrated:
            s, z = fq.qparams()
            sb = broadcast_param(s, wf, fq.spec)
            zb = broadcast_param(z, wf, fq.spec).to(torch.float32)
            lo, hi = (fq.spec.qmin - zb) * sb, (fq.spec.qmax - zb) * sb
            gap = torch.clamp(wq, lo, hi) - torch.clamp(wf, lo, hi)
            bad = (gap.abs() > sb * 1.001 + 1e-6).any()
        else:
            bad = not torch.allclose(wq, wf, rtol=1e-4, atol=1e-6 * float(wf.abs().max()))
        if bad:
            raise QuantbenchError(
                f"float model weights differ from the prepared model's at layer {info.name!r}; "
                "pass the model that prepare() received (after CLE: the equalised GraphModule)"
            )
    return ref


@contextlib.contextmanager
def bypass_uncalibrated(qm: QuantizedModel) -> Iterator[None]:
    """Turn activation quantizers still in ``observe`` mode off (and back on afterwards).

    Rescue passes must not feed calibration observers, and a quantizer without ranges
    cannot quantize; before ``calibrate`` the layers' inputs are therefore float.
    """
    changed = []
    for _, fq in qm.act_quantizers():
        if fq.mode in ("observe", "observe+quant") and not fq.spec.dynamic:
            changed.append((fq, fq.mode))
            fq.mode = "off"
    try:
        yield
    finally:
        for fq, mode in changed:
            fq.mode = mode


_RELU_FUNCTIONS = {F.relu, torch.relu}


def relu_follows(net: fx.GraphModule, name: str) -> bool:
    """True if module ``name`` is called once and its output's only user is a ReLU."""
    modules = dict(net.named_modules())
    nodes = [n for n in net.graph.nodes if n.op == "call_module" and n.target == name]
    if len(nodes) != 1 or len(nodes[0].users) != 1:
        return False
    user = next(iter(nodes[0].users))
    return (
        (user.op == "call_module" and isinstance(modules.get(user.target), nn.ReLU))
        or (user.op == "call_function" and user.target in _RELU_FUNCTIONS)
        or (user.op == "call_method" and user.target == "relu")
    )


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a parameter-free model)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def run_to_layer(net: nn.Module, layer: nn.Module, x: Tensor, *, want: str) -> Tensor:
    """Run ``net`` on ``x`` only as far as ``layer``; return its ``"input"`` or ``"output"``."""
    got: list[Tensor] = []

    def pre(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
        if want == "input":
            got.append(args[0].detach())
            raise _Stop

    def post(_m: nn.Module, _args: tuple[Tensor, ...], out: Tensor) -> None:
        got.append(out.detach())
        raise _Stop

    handle = layer.register_forward_pre_hook(pre) if want == "input" else layer.register_forward_hook(post)
    try:
        with torch.no_grad(), contextlib.suppress(_Stop):
            net(x)
    finally:
        handle.remove()
    if not got:
        raise QuantbenchError(f"layer {type(layer).__name__} did not run in the forward pass")
    return got[0]


def _channel_sum(y: Tensor) -> Tensor:
    """Per-channel sum (channel dim 1) over every other dim, in float64."""
    return y.transpose(0, 1).reshape(y.shape[1], -1).sum(dim=1).to(torch.float64)


def _layers_to_correct(qm: QuantizedModel) -> list[LayerInfo]:
    return [info for info in qm.layers if not info.spec.is_fp32]


def _relu_shift(y: Tensor, target_mean: Tensor, steps: int = 40) -> Tensor:
    """Per-channel ``d`` with ``mean(relu(y - d)) = target_mean`` (bisection; dim 1 = channel).

    ``mean(relu(y - d))`` falls monotonically from ``mean(y) - d`` (``d <= min y``) to 0
    (``d >= max y``), so the root is bracketed by those two ends.
    """
    yc = y.transpose(0, 1).reshape(y.shape[1], -1).to(torch.float32)
    t = target_mean.to(yc)
    lo = torch.minimum(yc.amin(dim=1), yc.mean(dim=1) - t) - 1e-6
    hi = yc.amax(dim=1)
    for _ in range(steps):
        mid = (lo + hi) / 2
        above = torch.relu(yc - mid[:, None]).mean(dim=1) > t
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (lo + hi) / 2


def bias_correction(
    qm: QuantizedModel,
    float_model: nn.Module,
    data: Any,
    *,
    n_images: int | None = 512,
    batch_size: int = 128,
    relu_aware: bool = True,
    progress: bool = False,
) -> None:
    """Remove the per-channel mean output shift of every quantized conv/linear (in place).

    For each quantized layer in execution order, the mean of its output (per output
    channel, over images and positions) is measured in the float network and in the
    quantized network - whose earlier layers are already corrected - and the layer's bias
    is shifted to make them equal (a zero bias is created if the layer had none).

    ``relu_aware``: for a layer whose only user is a ReLU, the means compared are those
    *after* the ReLU (the values the next layer sees), and the shift is solved per channel
    by bisection on the cached quantized outputs. Matching the pre-activation mean instead
    (the paper's form) counts errors on values the ReLU discards; after ReLU-aware AdaRound,
    which leaves negative pre-activations free, it undoes the rounding's work (measured on
    ResNet20 W2A8, first/last INT8: AdaRound -7.9 points, + pre-activation bias correction
    -41.5 points).

    Run it after :func:`~quantbench.quant.prepare.calibrate` (activation quantizers still
    observing are bypassed, which corrects the weight error only) and after AdaRound if both
    are used. Layers left FP32 by the plan are not touched. Memory: a ReLU-followed layer's
    outputs for ``n_images`` are cached while it is corrected.

    Args:
        qm: The prepared (and normally calibrated) model, modified in place.
        float_model: The float model ``prepare`` received (BN folded here if needed).
        data: Calibration images: a tensor, ``(images, labels)``, a data set or a loader.
        n_images: Images to average over (None: all).
        batch_size: Images per forward pass.
        relu_aware: Match means after a following ReLU (see above).
        progress: A bar of corrected layers on stderr and each layer's largest correction.

    Raises:
        QuantbenchError: ``float_model`` does not match ``qm``, or there are no images.

    Example:
        >>> calibrate(qm, calib)  # doctest: +SKIP
        >>> bias_correction(qm, model, calib)  # doctest: +SKIP
    """
    ref = float_reference(qm, float_model)
    x = collect_images(data, n_images)
    dev = model_device(qm)
    ref.to(dev)
    layers = _layers_to_correct(qm)
    relu = {info.name: relu_aware and relu_follows(qm.net, info.name) for info in layers}
    was_training = qm.training
    qm.eval()
    # Float means of every layer in one pass (the float network does not change).
    sums: dict[str, Tensor] = {}
    counts = dict.fromkeys(relu, 0)
    hooks = []

    def tap(name: str):
        def hook(_m: nn.Module, _a: tuple[Tensor, ...], out: Tensor) -> None:
            s = _channel_sum(torch.relu(out) if relu[name] else out)
            sums[name] = sums[name] + s if name in sums else s
            counts[name] += out.numel() // out.shape[1]

        return hook

    for info in layers:
        hooks.append(ref.get_submodule(info.name).register_forward_hook(tap(info.name)))
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                ref(x[i : i + batch_size].to(dev))
    finally:
        for h in hooks:
            h.remove()
    try:
        with bypass_uncalibrated(qm), bar(total=len(layers), desc="bias correction", unit="layer",
                                          enabled=progress) as shown:
            for info in layers:
                layer = qm.layer(info.name)
                float_mean = sums[info.name] / counts[info.name]
                cached: list[Tensor] = []
                total = torch.zeros_like(float_mean)
                for i in range(0, len(x), batch_size):
                    y = run_to_layer(qm, layer, x[i : i + batch_size].to(dev), want="output")
                    if relu[info.name]:
                        cached.append(y)
                    else:
                        total = total + _channel_sum(y)
                if relu[info.name]:
                    shift = _relu_shift(torch.cat(cached), float_mean)
                else:
                    shift = (total / counts[info.name] - float_mean).to(torch.float32)
                del cached
                with torch.no_grad():
                    if layer.bias is None:
                        layer.bias = nn.Parameter(torch.zeros_like(shift).to(layer.weight.device))
                    layer.bias.sub_(shift.to(layer.bias.device))
                shown.update(1)
                note(f"bias correction {info.name}: max |shift| {float(shift.abs().max()):.4g}", enabled=progress)
    finally:
        qm.train(was_training)
