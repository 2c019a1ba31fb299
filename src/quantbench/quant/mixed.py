"""Mixed precision: per-layer bit-widths that minimise predicted damage under a size budget.

Three steps, each inspectable:

1. **Sensitivity** (:func:`bit_sensitivity`): for every conv/linear layer and every candidate
   bit-width, the damage when ONLY that layer's weights are quantized to those bits, everything
   else float. Metrics: ``"mse"`` - mean squared error of the logits against the float model
   on calibration images (measured, cheap, smooth; the default); ``"hessian"`` - HAWQ's
   estimate ``mean(diag H) * ||Q(W) - W||^2`` with the Hessian trace of the loss w.r.t. the
   layer's weights from Hutchinson's estimator (no labels of the evaluation set needed, but
   the calibration labels are).
2. **Solver** (:func:`solve_bits`): a multiple-choice knapsack by dynamic programming -
   minimise the sum of per-layer damages (the usual additivity assumption) subject to the
   packed size (bytes: ``ceil(numel * bits / 8)`` per weight tensor, the format
   :mod:`quantbench.quant.pack` writes) or the parameter-weighted average bits.
3. **Plan** (:func:`mixed_plan`): the chosen bits as :class:`~quantbench.quant.spec.QuantPlan`
   overrides (activations keep ``act_bits``), ready for PTQ or QAT.

Mixed precision here is over WEIGHTS (what dominates the file size); activations use one
bit-width for all layers.

Example:
    >>> sens = bit_sensitivity(model, calib, bits=(2, 4, 8))  # doctest: +SKIP
    >>> choice = solve_bits(sens, budget_bytes=70_000)  # doctest: +SKIP
    >>> plan = mixed_plan(choice, act_bits=8)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.prepare import QuantizedModel, iterate_batches, prepare
from quantbench.quant.spec import FP32_LAYER, LayerSpec, QuantPlan, parse_scheme

__all__ = ["BitChoice", "LayerBits", "bit_sensitivity", "mixed_plan", "solve_bits", "weight_bytes"]

METRICS = ("mse", "hessian")


@dataclass(frozen=True)
class LayerBits:
    """One layer's sensitivity per candidate bit-width."""

    layer: str
    kind: str
    numel: int
    damage: dict[int, float]  # bits -> predicted damage (metric units)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BitChoice:
    """The solver's answer: bits per layer, predicted damage and packed weight bytes."""

    bits: dict[str, int]
    predicted_damage: float
    weight_bytes: int
    average_bits: float
    metric: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def weight_bytes(numel: int, bits: int) -> int:
    """Bytes of one bit-packed weight tensor (as :mod:`quantbench.quant.pack` stores it)."""
    return math.ceil(numel * bits / 8)


def _images_labels(data: Any, n_images: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    if hasattr(data, "tensors"):
        x, y = data.tensors()
        return x[:n_images], torch.as_tensor(y[:n_images], dtype=torch.long)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0][:n_images], torch.as_tensor(data[1][:n_images], dtype=torch.long)
    x = torch.cat(list(iterate_batches(data, n_images, 256)))
    return x, None


def _weight_only_plan(bits: int, weight_observer: str) -> QuantPlan:
    return parse_scheme(f"w{bits}", weight_observer=weight_observer)


def bit_sensitivity(model: nn.Module, data: Any, *, bits: tuple[int, ...] = (2, 4, 8), metric: str = "mse",
                    n_images: int = 256, weight_observer: str = "mse", batch_size: int = 128,
                    hutchinson_samples: int = 16) -> list[LayerBits]:
    """Damage of quantizing each layer's weights alone to each of ``bits``.

    Args:
        model: the float model (not modified).
        data: calibration images (with labels for ``"hessian"``).
        bits: candidate weight bit-widths, each in 2..8.
        metric: ``"mse"`` (logits MSE vs float) or ``"hessian"`` (HAWQ trace estimate).
        n_images: images used.
        weight_observer: how each candidate's weight range is chosen.
        hutchinson_samples: random probes for the Hessian trace.
    """
    if metric not in METRICS:
        raise QuantbenchError(f"mixed precision: metric {metric!r} unknown; expected one of: {', '.join(METRICS)}")
    if not bits or any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8 for b in bits):
        raise QuantbenchError(f"mixed precision: candidate bits must be integers in 2..8, got {bits!r}")
    x, y = _images_labels(data, n_images)
    if len(x) == 0:
        raise QuantbenchError("mixed precision: no calibration images")
    float_model = model.eval()
    with torch.no_grad():
        ref = torch.cat([float_model(xb) for xb in x.split(batch_size)])
    # One weight-only prepared model per bit-width; every quantizer off except the layer under test.
    prepared = {b: prepare(float_model, _weight_only_plan(b, weight_observer)) for b in sorted(set(bits))}
    first = prepared[min(prepared)]
    traces = _hessian_traces(first, x, y, hutchinson_samples, batch_size) if metric == "hessian" else {}
    out = []
    for info in first.layers:
        damage: dict[int, float] = {}
        numel = first.layer(info.name).weight.numel()
        for b, qm in prepared.items():
            wq = dict(qm.weight_quantizers())
            if metric == "hessian":
                layer = qm.layer(info.name)
                with torch.no_grad():
                    err = float(((wq[info.name](layer.weight) - layer.weight) ** 2).sum())
                damage[b] = traces[info.name] / numel * err
                continue
            qm.set_mode("off")
            wq[info.name].mode = "quant"
            with torch.no_grad():
                got = torch.cat([qm(xb) for xb in x.split(batch_size)])
            damage[b] = float(((got - ref) ** 2).mean())
        for qm in prepared.values():
            qm.set_mode("quant")
        out.append(LayerBits(info.name, info.kind, numel, damage))
    return out


def _hessian_traces(qm: QuantizedModel, x: torch.Tensor, y: torch.Tensor | None, samples: int,
                    batch_size: int) -> dict[str, float]:
    """Hutchinson estimate of trace(d^2 loss / d W_l^2) for every layer's (BN-folded) weight."""
    if y is None:
        raise QuantbenchError("mixed precision: the 'hessian' metric needs labelled calibration data")
    qm.set_mode("off")
    layers = [(info.name, qm.layer(info.name).weight) for info in qm.layers]
    params = [w for _, w in layers]
    flags = [w.requires_grad for w in params]
    for w in params:
        w.requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    totals = {name: 0.0 for name, _ in layers}
    try:
        xb, yb = x[:batch_size], y[:batch_size]
        loss = nn.functional.cross_entropy(qm(xb), yb)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for _ in range(samples):
            vs = [torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1 for w in params]
            hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
            for (name, _), v, h in zip(layers, vs, hv, strict=True):
                totals[name] += float((v * h).sum()) / samples
    finally:
        for w, f in zip(params, flags, strict=True):
            w.requires_grad_(f)
        qm.set_mode("quant")
    return {k: max(v, 0.0) for k, v in totals.items()}


def solve_bits(sens: list[LayerBits], *, budget_bytes: int | None = None, average_bits: float | None = None,
               resolution: int = 4000, metric: str = "mse") -> BitChoice:
    """Bits per layer minimising the summed damage under a weight-bytes or average-bits budget.

    Multiple-choice knapsack solved exactly by dynamic programming on the budget quantised to
    ``resolution`` steps (sizes are rounded UP, so the answer never exceeds the budget).

    Raises:
        QuantbenchError: no budget or both, or a budget below the smallest possible model.
    """
    if (budget_bytes is None) == (average_bits is None):
        raise QuantbenchError("mixed precision: give exactly one budget: bytes (KB) or average bits")
    if not sens:
        raise QuantbenchError("mixed precision: no layers")
    if budget_bytes is not None:
        cost = {ls.layer: {b: weight_bytes(ls.numel, b) for b in ls.damage} for ls in sens}
        cap = float(budget_bytes)
        what = f"{budget_bytes} bytes of packed weights"
    else:
        cost = {ls.layer: {b: ls.numel * b for b in ls.damage} for ls in sens}
        cap = float(average_bits) * sum(ls.numel for ls in sens)
        what = f"an average of {average_bits:g} bits"
    smallest = sum(min(c.values()) for c in cost.values())
    if smallest > cap:
        need = smallest if budget_bytes is not None else smallest / sum(ls.numel for ls in sens)
        raise QuantbenchError(f"mixed precision: budget of {what} is below the smallest possible model "
                              f"({need:.6g} {'bytes' if budget_bytes is not None else 'bits on average'})")
    # The DP runs over what each layer costs ABOVE its cheapest option: at a budget just over the smallest model
    # (70 KB for a ResNet-20 whose 2-bit weights alone are 67 KB) the steps then resolve the few spare bytes
    # instead of rounding them away (20 layers x ceil(cost / (budget / resolution)) ate ~340 of 650 bytes).
    floor = {ls.layer: min(cost[ls.layer].values()) for ls in sens}
    cost = {ls.layer: {b: c - floor[ls.layer] for b, c in cost[ls.layer].items()} for ls in sens}
    cap -= smallest
    unit = max(cap / resolution, 1e-12)
    steps = int(cap // unit)
    inf = float("inf")
    best = [inf] * (steps + 1)
    best[0] = 0.0
    back: list[list[tuple[int, int] | None]] = []
    for ls in sens:
        new = [inf] * (steps + 1)
        choice: list[tuple[int, int] | None] = [None] * (steps + 1)
        options = [(b, math.ceil(cost[ls.layer][b] / unit - 1e-9), ls.damage[b]) for b in sorted(ls.damage)]
        for used in range(steps + 1):
            if best[used] == inf:
                continue
            for b, w, d in options:
                nu = used + w
                if nu <= steps and best[used] + d < new[nu]:
                    new[nu] = best[used] + d
                    choice[nu] = (b, used)
        best = new
        back.append(choice)
    end = min(range(steps + 1), key=lambda i: best[i])
    if best[end] == inf:  # rounding up made the smallest model not fit: fall back to the minimum bits
        bits = {ls.layer: min(ls.damage) for ls in sens}
    else:
        bits = {}
        at = end
        for ls, choice in zip(reversed(sens), reversed(back), strict=True):
            b, prev = choice[at]  # type: ignore[misc]
            bits[ls.layer] = b
            at = prev
    total_bytes = sum(weight_bytes(ls.numel, bits[ls.layer]) for ls in sens)
    avg = sum(ls.numel * bits[ls.layer] for ls in sens) / sum(ls.numel for ls in sens)
    damage = sum(ls.damage[bits[ls.layer]] for ls in sens)
    ordered = {ls.layer: bits[ls.layer] for ls in sens}
    return BitChoice(ordered, damage, total_bytes, avg, metric)


def mixed_plan(choice: BitChoice, *, act_bits: int = 8, weight_observer: str = "mse",
               act_observer: str = "mse") -> QuantPlan:
    """A :class:`QuantPlan` with the chosen weight bits per layer and ``act_bits`` activations."""
    base = parse_scheme(f"w8a{act_bits}", weight_observer=weight_observer, act_observer=act_observer)
    overrides: dict[str, LayerSpec] = {}
    for layer, b in choice.bits.items():
        w = base.default.weight.replace(bits=b) if base.default.weight is not None else None
        overrides[layer] = LayerSpec(w, base.default.act) if w is not None else FP32_LAYER
    return base.replace(overrides=overrides, scheme=f"mixed-a{act_bits}")
