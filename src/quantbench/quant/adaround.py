"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Why: rounding every weight to its nearest grid point minimises each weight's own error, not
the error of the layer's *output*. Weights interact through the input's correlations, and at
4 bits and below choosing to round some weights up and others down - never further than the
two grid points around the weight - recovers most of the accuracy that round-to-nearest
loses, with a few hundred unlabeled images and no change of the grid itself (scales and zero
points stay those of the weight quantizer, so export and bit packing are unaffected).

Method, per conv/linear in execution order (layer-wise, as in the paper):

* inputs ``x_q`` from the *quantized* network so far (earlier layers already rounded,
  activation quantizers applied once calibrated) and targets ``f(W x + b)`` from the float
  network - the asymmetric reconstruction of the paper's eq. 25, which also corrects the
  error accumulated upstream;
* soft weights ``W~ = s * (clamp(floor(W / s) + h(V) + z, qmin, qmax) - z)`` with the
  rectified sigmoid ``h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``, ``zeta = 1.1``,
  ``gamma = -0.1``, ``V`` initialised so that ``h(V) = W / s - floor(W / s)`` (``W~ = W``);
* loss ``||f(W x + b) - f(W~ x_q + b)||^2`` (summed over channels, averaged over positions and
  images) ``+ lambda * sum(1 - |2 h(V) - 1|^beta)``, the regulariser off for the first
  ``warmup`` fraction of the iterations, then with ``beta`` annealed linearly from 20 to 2 so
  that ``h(V)`` is pushed to 0 or 1; ``f`` is the ReLU that follows the layer, if any;
* finally ``W = s * (clamp(floor(W / s) + [h(V) >= 0.5] + z, qmin, qmax) - z)``: the weight
  lies exactly on its quantizer's grid, so ``fake_quantize(W) == W`` with the unchanged scale.

Example:
    >>> qm = calibrate(prepare(model, parse_scheme("w4a8")), calib)  # doctest: +SKIP
    >>> adaround(qm, model, calib, n_images=512, iters=1000)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantbench.errors import QuantbenchError
from quantbench.progress import bar, note
from quantbench.quant.bias_correction import (
    bypass_uncalibrated,
    collect_images,
    float_reference,
    model_device,
    relu_follows,
    run_to_layer,
)
from quantbench.quant.brecq_blocks import propagate
from quantbench.quant.fake import FakeQuant, broadcast_param
from quantbench.quant.prepare import QuantizedModel

__all__ = ["GAMMA", "ZETA", "SoftRounding", "adaround", "annealed_beta", "rectified_sigmoid", "round_layer"]

ZETA, GAMMA = 1.1, -0.1
"""Stretch of the rectified sigmoid (paper section 4.1): h reaches exactly 0 and 1."""


def rectified_sigmoid(v: Tensor) -> Tensor:
    """``h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _inverse_rectified_sigmoid(h: Tensor) -> Tensor:
    """``V`` with ``h(V) = h`` for ``h`` in ``[0, 1)``."""
    return -torch.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


def _layer_forward(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, weight, layer.bias)
    return F.linear(x, weight, layer.bias)


def _rec_loss(out: Tensor, target: Tensor) -> Tensor:
    """Squared error summed over channels (dim 1), averaged over images and positions."""
    return (out - target).pow(2).sum(dim=1).mean()


class SoftRounding(nn.Module):
    """The rounding variables of one layer: ``W~ = s * (clamp(floor(W / s) + h(V) + z, qmin, qmax) - z)``.

    Installed in place of a layer's ``weight_fq`` while its rounding is optimised (the layer's
    forward then uses the soft weight, whatever network runs it: one layer, a block, a stage);
    :meth:`harden` writes the chosen grid point back into the weight. Shared by AdaRound and
    block reconstruction (:mod:`quantbench.quant.brecq`).

    Example:
        >>> rounding = SoftRounding(qm.layer("conv1"))  # doctest: +SKIP
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        fq = layer.weight_fq
        if not isinstance(fq, FakeQuant):
            raise QuantbenchError(f"AdaRound: layer {type(layer).__name__} has no weight quantizer")
        if fq.spec.companding != "none":
            raise QuantbenchError("AdaRound needs a uniform weight grid; this layer uses companding")
        self.layer, self.fq, self.spec = [layer], fq, fq.spec  # list: not a registered submodule
        w = layer.weight.detach()
        scale, zero_point = fq.qparams()
        self.register_buffer("s", broadcast_param(scale, w, fq.spec).to(w.dtype))
        self.register_buffer("z", broadcast_param(zero_point, w, fq.spec).to(w.dtype))
        self.register_buffer("w_floor", torch.floor(w / self.s))
        self.v = nn.Parameter(_inverse_rectified_sigmoid(w / self.s - self.w_floor))

    def weight(self, h: Tensor) -> Tensor:
        """The weight for rounding offsets ``h`` in ``[0, 1]`` (soft, or 0/1 for the final choice)."""
        return (torch.clamp(self.w_floor + h + self.z, self.spec.qmin, self.spec.qmax) - self.z) * self.s

    def forward(self, _w: Tensor) -> Tensor:  # called as the layer's weight_fq(weight)
        return self.weight(rectified_sigmoid(self.v))

    def regularizer(self, b: float) -> Tensor:
        """``sum(1 - |2 h(V) - 1|^b)``: zero only when every ``h`` is exactly 0 or 1."""
        return (1.0 - (2.0 * rectified_sigmoid(self.v) - 1.0).abs().pow(b)).sum()

    def harden(self) -> None:
        """Write ``W = s * (clamp(floor(W / s) + [h(V) >= 0.5] + z) - z)`` into the layer (on the grid)."""
        with torch.no_grad():
            hard = (rectified_sigmoid(self.v) >= 0.5).to(self.s.dtype)
            self.layer[0].weight.copy_(self.weight(hard))

    @contextlib.contextmanager
    def installed(self) -> Iterator[SoftRounding]:
        """The layer computes with the soft weight inside the block, with its quantizer afterwards."""
        layer = self.layer[0]
        layer.weight_fq = self
        try:
            yield self
        finally:
            layer.weight_fq = self.fq


def annealed_beta(t: int, iters: int, warmup: float, beta: tuple[float, float]) -> float | None:
    """The regulariser exponent at step ``t`` (None during warm-up): linear from ``beta[0]`` to ``beta[1]``."""
    start = int(warmup * iters)
    if t < start:
        return None
    rel = (t - start) / max(iters - start, 1)
    return beta[1] + (beta[0] - beta[1]) * max(0.0, 1.0 - rel)


def round_layer(
    layer: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    act: Callable[[Tensor], Tensor] | None = None,
    iters: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-2,
    reg_weight: float = 0.01,
    beta: tuple[float, float] = (20.0, 2.0),
    warmup: float = 0.2,
    generator: torch.Generator | None = None,
    on_step: Callable[[], object] | None = None,
) -> dict[str, float]:
    """AdaRound one quantized conv/linear in place (its weight ends on the quantizer's grid).

    Args:
        layer: A prepared ``QConv2d``/``QLinear`` whose ``weight_fq`` holds the grid.
        x: Its cached inputs (from the quantized network), ``[N, ...]``.
        target: The float layer's outputs for the same images, ``act`` already applied.
        act: Activation applied to the layer output before the loss (ReLU or None).
        iters: Adam steps.
        batch_size: Samples per step.
        lr: Adam learning rate on ``V``.
        reg_weight: ``lambda``, weight of the rounding regulariser.
        beta: Start and end of the annealed regulariser exponent.
        warmup: Fraction of ``iters`` without regulariser.
        generator: Seeds the batch sampling.
        on_step: Called after every Adam step (a progress bar's ``update``); draws no random numbers.

    Returns:
        ``{"loss_nearest", "loss_adaround"}``: reconstruction loss (see :func:`_rec_loss`)
        on up to 256 cached samples with round-to-nearest and with the result.

    Example:
        >>> round_layer(qm.layer("conv1"), x, target, iters=500)  # doctest: +SKIP
    """
    rounding = SoftRounding(layer)
    w = layer.weight.detach()

    def loss_on(weight: Tensor) -> float:
        n = min(len(x), 256)
        with torch.no_grad():
            total = 0.0
            for i in range(0, n, 64):
                out = _layer_forward(layer, x[i : min(i + 64, n)], weight)
                total += float(_rec_loss(act(out) if act else out, target[i : min(i + 64, n)])) * len(out)
        return total / n

    loss_nearest = loss_on(rounding.fq(w))
    opt = torch.optim.Adam([rounding.v], lr=lr)
    for t in range(iters):
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
        out = _layer_forward(layer, x[idx], rounding(w))
        loss = _rec_loss(act(out) if act else out, target[idx])
        b = annealed_beta(t, iters, warmup, beta)
        if b is not None:
            loss = loss + reg_weight * rounding.regularizer(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step()
    rounding.harden()
    return {"loss_nearest": loss_nearest, "loss_adaround": loss_on(layer.weight.detach())}


def _collect(net: nn.Module, layer: nn.Module, x: Tensor, want: str, batch_size: int) -> Tensor:
    dev = model_device(net)
    parts = [
        run_to_layer(net, layer, x[i : i + batch_size].to(dev), want=want)
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(parts)


def adaround(
    qm: QuantizedModel,
    float_model: nn.Module,
    data: Any,
    *,
    n_images: int | None = 512,
    iters: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-2,
    reg_weight: float = 0.01,
    beta: tuple[float, float] = (20.0, 2.0),
    warmup: float = 0.2,
    relu_aware: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> None:
    """Choose the rounding of every quantized conv/linear weight by AdaRound (in place).

    Layers are processed in execution order; each one's inputs come from the quantized
    network with the layers before it already rounded, its targets from the float network
    (asymmetric reconstruction). Run it after :func:`~quantbench.quant.prepare.calibrate`
    so that the inputs include activation quantization (activation quantizers still
    observing are bypassed); re-calibrating activations afterwards is optional. Memory:
    each layer's inputs and outputs for ``n_images`` are cached (ResNet20 at 32x32 with 512
    images: about 64 MB at the widest layer).

    Args:
        qm: The prepared model, modified in place (weights only; scales are kept).
        float_model: The float model ``prepare`` received (BN folded here if needed).
        data: Calibration images: a tensor, ``(images, labels)``, a data set or a loader.
        n_images: Calibration images to use (None: all).
        iters: Optimisation steps per layer.
        batch_size: Images per step.
        lr: Adam learning rate on the rounding variables.
        reg_weight: ``lambda`` of the rounding regulariser.
        beta: ``(start, end)`` of the annealed regulariser exponent.
        warmup: Fraction of ``iters`` before the regulariser starts.
        relu_aware: Apply the ReLU that follows a layer to output and target (the paper's
            ``f_a`` variant): errors on units the ReLU zeroes do not count.
        seed: Seed of the batch sampling (results are reproducible).
        progress: A bar per layer on stderr (``adaround layer 12/57 NAME``, Adam iterations) and one
            line per finished layer (loss with nearest and AdaRound rounding, time).

    Raises:
        QuantbenchError: ``float_model`` does not match, a companded (non-uniform) weight
            grid, or bad arguments.

    Example:
        >>> calibrate(qm, calib)  # doctest: +SKIP
        >>> adaround(qm, model, calib, n_images=512, iters=1000)  # doctest: +SKIP
    """
    if iters < 1 or batch_size < 1:
        raise QuantbenchError(f"AdaRound: iters and batch_size must be >= 1, got {iters}, {batch_size}")
    if not 0.0 <= warmup < 1.0:
        raise QuantbenchError(f"AdaRound: warmup must be in [0, 1), got {warmup}")
    if not (lr > 0 and reg_weight >= 0 and len(beta) == 2 and min(beta) > 0):
        raise QuantbenchError(
            f"AdaRound: need lr > 0, reg_weight >= 0, beta > 0; got {lr}, {reg_weight}, {beta}"
        )
    todo = [
        (info.name, fq)
        for info in qm.layers
        if isinstance(fq := getattr(qm.layer(info.name), "weight_fq", None), FakeQuant)
    ]
    companded = [name for name, fq in todo if fq.spec.companding != "none"]
    if companded:
        raise QuantbenchError(
            f"AdaRound needs a uniform weight grid; layer(s) {', '.join(companded)} use companding"
        )
    ref = float_reference(qm, float_model)
    dev = model_device(qm)
    ref.to(dev)
    images = collect_images(data, n_images).to(dev)
    generator = torch.Generator().manual_seed(seed)
    units = cached_units(qm, ref)
    index = {name: i for i, (name, _) in enumerate(todo, 1)}
    was_training = qm.training
    qm.eval()
    try:
        with bypass_uncalibrated(qm):
            # The quantized and float networks' values at the current unit's input, advanced one unit at
            # a time (each unit runs once per network), instead of running from the images to every layer.
            xq = xf = images
            for u, (seg_q, seg_f, names) in enumerate(units):
                for name in (n for n in names if n in index):
                    i, t0 = index[name], time.perf_counter()
                    layer = qm.layer(name)
                    act = F.relu if relu_aware and relu_follows(qm.net, name) else None
                    # Cached once per layer, before its iterations: the quantized network's inputs (earlier
                    # layers already rounded) and the float network's outputs; every Adam step samples them.
                    x = _collect(seg_q, layer, xq, "input", 128)
                    target = _collect(seg_f, ref.get_submodule(name), xf, "output", 128)
                    if act is not None:
                        target = act(target)
                    with bar(total=iters, desc=f"adaround layer {i}/{len(todo)} {name}", unit="iter",
                             enabled=progress) as shown:
                        stats = round_layer(
                            layer, x, target, act=act, iters=iters, batch_size=batch_size, lr=lr, beta=beta,
                            reg_weight=reg_weight, warmup=warmup, generator=generator, on_step=shown.update,
                        )  # fmt: skip
                    del x, target
                    note(f"adaround layer {i}/{len(todo)} {name}: loss nearest {stats['loss_nearest']:.4g} -> "
                         f"{stats['loss_adaround']:.4g} ({time.perf_counter() - t0:.1f} s)", enabled=progress)
                if u + 1 < len(units):
                    xq, xf = propagate(seg_q, xq), propagate(seg_f, xf)
    finally:
        qm.train(was_training)


def cached_units(qm: QuantizedModel, ref: nn.Module) -> list[tuple[nn.Module, nn.Module, tuple[str, ...]]]:
    """``(quantized unit, float unit, layer names)`` per unit of :func:`~quantbench.quant.brecq_blocks.find_blocks`.

    The float unit is the same piece of graph with the activation quantizers taken out and each
    conv/linear replaced by the float reference's layer of the same name. A graph that cannot be
    cut (several inputs or outputs) gives one unit: the whole quantized and float networks.

    Example:
        >>> [names for _, _, names in cached_units(qm, ref)][:2]  # doctest: +SKIP
        [('conv1',), ('layer1.0.conv1', 'layer1.0.conv2')]
    """
    from quantbench.quant.brecq_blocks import find_blocks, segment_module

    try:
        blocks = find_blocks(qm)
    except QuantbenchError:
        return [(qm, ref, tuple(info.name for info in qm.layers))]
    layer_names = {info.name for info in qm.layers}

    def float_path(target: str, module: nn.Module) -> nn.Module | None:
        if isinstance(module, FakeQuant):
            return None
        return ref.get_submodule(target) if target in layer_names else module

    return [(segment_module(qm.net, b), segment_module(qm.net, b, float_path), b.layers) for b in blocks]
