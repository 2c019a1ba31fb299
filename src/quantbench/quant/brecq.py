"""Block reconstruction: BRECQ (Li et al., ICLR 2021) and QDrop (Wei et al., ICLR 2022).

Why: AdaRound rounds each layer to reproduce that layer's output, but at 4-bit activations and
2-bit weights the errors of the two convolutions of a residual block interact (the second can
compensate the first only if both are chosen together) and the layer-wise optimum is not the
block's. BRECQ chooses the rounding of every weight of a block jointly, with the *block output*
error as the loss, and learns the block's activation step sizes beside it (LSQ). QDrop adds one
idea: during reconstruction each activation quantizer of the block is skipped per element with
probability ``p`` (and the block input is the float network's value in the same elements), so
the rounding is chosen for a neighbourhood of activation noise instead of one fixed noise
pattern; the published records (MQBench, ImageNet ResNet-18 W2A4: AdaRound 62.3, BRECQ 63.6,
QDrop 64.5) show the order.

Method, per unit of :func:`~quantbench.quant.brecq_blocks.find_blocks` in execution order:

* cached once per unit: the quantized network's value at the unit input ``x_q`` (earlier units
  already reconstructed, their activation quantizers applied), the float network's ``x_f`` and
  the float unit's output ``y`` for ``n_images`` images; the caches advance one unit at a time;
* every weight quantizer of the unit becomes an AdaRound soft rounding
  (:class:`~quantbench.quant.adaround.SoftRounding`), every static activation quantizer a
  learned step size (LSQ gradient, Adam with a cosine-decayed rate);
* each Adam step samples ``batch_size`` cached images; with ``drop_prob = p > 0`` the input is
  ``x_f`` where a uniform draw is below ``p`` and ``x_q`` elsewhere, and each activation
  quantizer passes its input through unquantized in the elements where a fresh draw is below
  ``p`` (``share_input_mask``: the quantizer on the unit input reuses the input's draw); loss
  ``||y - unit(x)||^2`` (optionally weighted per element by the Fisher diagonal, below) plus
  AdaRound's annealed rounding regulariser;
* finally weights go to the chosen grid points, the learned steps into the quantizers.

PD-Quant's prediction-difference term (``pd_weight > 0``; Liu et al., CVPR 2023): the same step also runs
the unit on the undropped quantized input and on through the float rest of the network, and adds
``pd_weight x KL(float predictions || those)`` at ``pd_temperature`` to the loss, so the rounding is
chosen for what reaches the predictions, not only for the block output. It costs 1.8-2.5x the time
(first hold-out CNN W4A4: lower evaluation cross-entropy on two seeds; shared ResNet-20 W4A4 -0.00 against
QDrop's +0.42 points, in 20 instead of 8 minutes; docs/benchmarks/ptq.md).

``drop_prob = 0`` draws no random numbers for dropping, so QDrop with ``p = 0`` *is* BRECQ (same
seed, same result). Fisher weighting (BRECQ's ``fisher_diag``): each element of the output error
is weighted by ``(1 + g^2 / mean g^2) / 2``, ``g`` the gradient of the KL divergence between the
float network's and the quantized network's predictions with respect to the unit's output.

Example:
    >>> qm = calibrate(prepare(model, parse_scheme("w4a4")), calib)  # doctest: +SKIP
    >>> reconstruct(qm, model, calib, iters=1000, drop_prob=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantbench.errors import QuantbenchError
from quantbench.progress import bar, note
from quantbench.quant import fused
from quantbench.quant.adaround import SoftRounding, annealed_beta
from quantbench.quant.bias_correction import (
    bypass_uncalibrated,
    collect_images,
    float_reference,
    model_device,
)
from quantbench.quant.brecq_blocks import Block, find_blocks, propagate, segment_module
from quantbench.quant.fake import EPS, FakeQuant, broadcast_param, lsq_grad_scale, scaled_grad
from quantbench.quant.fused import MIN_ELEMENTS, fused_act_quant, fused_available
from quantbench.quant.prepare import QuantizedModel

__all__ = ["LearnedActQuant", "reconstruct"]


class _ActQuant(torch.autograd.Function):
    """LSQ fake quantization with QDrop's per-element bypass, forward and backward written out.

    Same values and gradients as :func:`~quantbench.quant.fake.lsq_fake_quantize` (mixed with the
    input where ``keep`` is 1), but without autograd's chain of clamp/where nodes: on a CPU those
    element-wise passes, not the convolutions, dominated a reconstruction step.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, s: Tensor, z: Tensor, qmin: int, qmax: int, grad_scale: float,
                keep: Tensor | None) -> Tensor:
        # s, z: 0-d or already shaped to broadcast against x (fake.broadcast_param)
        v = x / s
        t = torch.round(v).add_(z)
        code = t.clamp(qmin, qmax)
        inside = torch.eq(t, code).to(x.dtype)
        code.sub_(z)  # q / s
        ds = code - v.mul_(inside)  # d q / d s: round(v) - v inside, qmin - z / qmax - z outside
        out = code.mul_(s)
        if keep is not None:  # one fused pass each (keep is 0/1): x where kept, else the quantized value
            out.lerp_(x, keep)
            torch.maximum(inside, keep, out=inside)  # a kept float element passes its gradient
            ds.addcmul_(ds, keep, value=-1.0)  # and gives the step none
        ctx.save_for_backward(inside, ds)
        ctx.s_shape, ctx.grad_scale = s.shape, grad_scale
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        inside, ds = ctx.saved_tensors
        gs = (g * ds).sum_to_size(ctx.s_shape) if len(ctx.s_shape) else (g * ds).sum()
        return g * inside, gs * ctx.grad_scale, None, None, None, None, None


class DropPool:
    """Bernoulli(p) masks for QDrop, as windows at random offsets into one pool of draws.

    Why a pool: drawing a fresh uniform number per activation element costs more than the rest of
    a reconstruction step on a CPU (measured: 4.7 ms for a 32x16x32x32 batch against 0.06 ms for a
    multiplication). A window of a 2^23-element pool at a random offset is a mask whose elements
    are independent Bernoulli(p) draws; consecutive masks overlap in draws but not in position.
    """

    def __init__(self, p: float, generator: torch.Generator, device: torch.device) -> None:
        self.p, self.generator, self.device = p, generator, device
        self.pool = torch.empty(0, device=device)

    def mask(self, shape: torch.Size, like: Tensor | None = None) -> Tensor:
        n = math.prod(shape)
        if 4 * n > len(self.pool):  # drawn once per run, grown for a larger activation
            size = max(1 << 22, 8 * n)
            self.pool = (torch.rand(size, generator=self.generator, device=self.device) < self.p).float()
        start = int(torch.randint(len(self.pool) - n + 1, (1,), generator=self.generator, device=self.device))
        window = self.pool[start: start + n]
        if like is not None and like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
            b, c, h, w = shape
            return window.view(b, h, w, c).permute(0, 3, 1, 2)
        return window.view(shape)


class LearnedActQuant(nn.Module):
    """An activation quantizer's stand-in during reconstruction: learned step, optional dropping.

    ``scale`` starts at the calibrated one and learns with LSQ's gradient; while ``dropping`` is
    set (the optimisation steps) each element is left unquantized with the pool's probability
    (QDrop). :meth:`write_back` stores the learned step in the real quantizer.

    With ``share_input_mask`` a quantizer on the unit's input takes the unit's own input mask
    (``input_keep``, set each step) instead of a fresh one (see :func:`reconstruct`).
    """

    def __init__(self, fq: FakeQuant, drops: DropPool | None, learn: bool) -> None:
        super().__init__()
        self.fq, self.drops = [fq], drops  # list: not a submodule
        self.dropping = False  # on only during the optimisation steps (not for the before/after losses)
        self.input_keep: Tensor | None = None  # the unit's input mask, for a quantizer on the unit input
        self.scale = nn.Parameter(fq.qparams()[0].clone(), requires_grad=learn)
        self.register_buffer("z", fq.zero_point.detach().to(torch.float32))
        self.register_buffer("lo", torch.tensor(float(fq.spec.qmin)))  # the bounds as tensors: the compiled
        self.register_buffer("hi", torch.tensor(float(fq.spec.qmax)))  # quantizer then never recompiles for them

    def forward(self, x: Tensor) -> Tensor:
        spec = self.fq[0].spec
        scale = self.scale.abs().clamp(min=EPS)
        numel = x[0].numel() // max(scale.numel(), 1) if x.dim() > 1 else x.numel()
        grad_scale = lsq_grad_scale(numel, spec)
        z = broadcast_param(self.z, x, spec)
        keep = None
        if self.dropping and self.drops is not None:
            keep = self.input_keep if self.input_keep is not None else self.drops.mask(x.shape, x)
        if torch.is_grad_enabled() and x.numel() >= MIN_ELEMENTS:  # large: one compiled loop where available
            s = broadcast_param(scaled_grad(scale, grad_scale), x, spec)
            out = fused_act_quant(x, s, z, self.lo, self.hi, keep)
            if out is not None:
                return out
        return _ActQuant.apply(x, broadcast_param(scale, x, spec), z, spec.qmin, spec.qmax, grad_scale, keep)

    def write_back(self) -> None:
        fq = self.fq[0]
        with torch.no_grad():
            fq.scale.copy_(self.scale.detach().abs().clamp(min=EPS).to(fq.scale.dtype))


def _check(iters: int, batch_size: int, drop_prob: float, lr: float, act_lr: float, warmup: float) -> None:
    if iters < 1 or batch_size < 1:
        raise QuantbenchError(f"block reconstruction: iters and batch_size must be >= 1, got {iters}, {batch_size}")
    if not (isinstance(drop_prob, (int, float)) and 0.0 <= drop_prob < 1.0):
        raise QuantbenchError(f"QDrop: drop probability must be in [0, 1), got {drop_prob!r}")
    if not (lr > 0 and act_lr >= 0 and 0.0 <= warmup < 1.0):
        raise QuantbenchError(f"block reconstruction: need lr > 0, act_lr >= 0, 0 <= warmup < 1; "
                              f"got {lr}, {act_lr}, {warmup}")


def reconstruct(
    qm: QuantizedModel,
    float_model: nn.Module,
    data: Any,
    *,
    n_images: int | None = 512,
    iters: int = 1000,
    batch_size: int = 32,
    drop_prob: float = 0.0,
    granularity: str = "block",
    fisher: bool = False,
    learn_act: bool = True,
    lr: float = 1e-2,
    act_lr: float = 4e-4,
    reg_weight: float = 0.01,
    beta: tuple[float, float] = (20.0, 2.0),
    warmup: float = 0.2,
    seed: int = 0,
    share_input_mask: bool = False,
    pd_weight: float = 0.0,
    pd_temperature: float = 4.0,
    module_tree: nn.Module | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """BRECQ (``drop_prob=0``) or QDrop (``drop_prob>0``) on every unit of ``qm``, in place.

    Run it after :func:`~quantbench.quant.prepare.calibrate` (the calibrated activation steps are
    the starting point) and do not re-calibrate afterwards: that would discard the learned steps.

    Args:
        qm: The prepared, calibrated model; weights go to grid points, activation steps are learned.
        float_model: The float model ``prepare`` received.
        data: Calibration images: a tensor, ``(images, labels)``, a data set or a loader.
        n_images: Calibration images to cache (None: all).
        iters: Adam steps per unit.
        batch_size: Images per step.
        drop_prob: QDrop's probability of leaving an activation element unquantized (0: BRECQ).
        granularity: ``"block"`` (residual blocks, and chains the module tree names one block),
            ``"cut"`` (the graph's units only) or ``"stage"`` (runs of blocks of one width); see
            :func:`~quantbench.quant.brecq_blocks.find_blocks`.
        fisher: Weight the output error by the Fisher diagonal (see the module docstring).
        learn_act: Learn the activation step sizes (LSQ) beside the rounding.
        lr: Adam rate of the rounding variables.
        act_lr: Adam rate of the step sizes (cosine-decayed to 0 over ``iters``).
        reg_weight: ``lambda`` of AdaRound's rounding regulariser.
        beta: ``(start, end)`` of the annealed regulariser exponent.
        warmup: Fraction of ``iters`` before the regulariser starts.
        seed: Seeds batch sampling and dropping (results are reproducible).
        share_input_mask: QDrop only: the quantizer on the unit input drops exactly the elements
            that took the float network's value, so each input element is either the float value,
            unquantized, or the quantized network's value, quantized (the reference code's mix,
            whose blocks receive already-quantized inputs). Off by default: independent masks
            measured no worse (docs/benchmarks/ptq.md).
        pd_weight: PD-Quant's prediction-difference term (0: off): the unit's quantized output is run
            through the float rest of the network and ``pd_weight x KL(float predictions || these)``
            at ``pd_temperature`` is added to the loss (see the module docstring).
        pd_temperature: Softmax temperature of that KL (PD-Quant's ``T``; 4 for ResNets).
        module_tree: The model whose module tree names the blocks (default ``float_model``; pass
            the user's model when ``float_model`` is a rewritten graph, e.g. after equalization).
        progress: A bar per unit on stderr and one line per finished unit (loss before/after, time).

    Returns:
        Per unit: ``{"block", "layers", "loss_before", "loss_after", "seconds"}`` (output MSE on up
        to 256 cached images, no dropping).

    Raises:
        QuantbenchError: Bad arguments, companded weights, a model that cannot be cut into units
            (several inputs/outputs), no quantized layer, or a float model that does not match.

    Example:
        >>> calibrate(qm, calib)  # doctest: +SKIP
        >>> stats = reconstruct(qm, model, calib, iters=1000, drop_prob=0.5)  # doctest: +SKIP
    """
    _check(iters, batch_size, drop_prob, lr, act_lr, warmup)
    if pd_weight < 0 or pd_temperature <= 0:
        raise QuantbenchError(f"block reconstruction: pd_weight must be >= 0 and pd_temperature > 0, got "
                              f"{pd_weight} and {pd_temperature}")
    if pd_weight > 0 and share_input_mask:
        raise QuantbenchError("block reconstruction: share_input_mask and pd_weight cannot be combined (the "
                              "prediction term runs the undropped input beside the dropped one)")
    companded = [n for n, fq in qm.weight_quantizers() if fq.spec.companding != "none"]
    if companded:
        raise QuantbenchError(f"block reconstruction needs a uniform weight grid; {', '.join(companded)} companded")
    blocks = find_blocks(qm, granularity, model=float_model if module_tree is None else module_tree)
    ref = float_reference(qm, float_model)
    dev = model_device(qm)
    ref.to(dev)
    images = collect_images(data, n_images).to(dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    layer_names = {info.name for info in qm.layers}

    def float_path(target: str, module: nn.Module) -> nn.Module | None:
        if isinstance(module, FakeQuant):
            return None
        return ref.get_submodule(target) if target in layer_names else module

    logits = propagate(ref, images) if fisher or pd_weight > 0 else None
    if pd_weight > 0:
        ref.requires_grad_(False)  # the float rest of the network carries gradients, it learns nothing
        float_log_p = F.log_softmax(logits / pd_temperature, 1)  # the KL's target, once for every step
    drops = DropPool(drop_prob, generator, dev) if drop_prob > 0 else None
    stats: list[dict[str, Any]] = []
    was_training = qm.training
    qm.eval()
    started = time.perf_counter()
    try:
        with bypass_uncalibrated(qm):
            xq = xf = images
            for k, block in enumerate(blocks):
                t0 = time.perf_counter()
                seg_f = segment_module(qm.net, block, float_path)
                target = propagate(seg_f, xf)
                weight = _fisher_weight(qm, blocks, k, xq, logits) if fisher else None
                pd = None
                if pd_weight > 0:
                    tail = nn.Sequential(*[segment_module(qm.net, b, float_path) for b in blocks[k + 1:]])
                    pd = (tail, float_log_p, pd_weight, pd_temperature)
                with bar(total=iters, desc=f"reconstruct {k + 1}/{len(blocks)} {block.name}", unit="iter",
                         enabled=progress) as shown:
                    before, after = _reconstruct_block(
                        qm, block, xq, xf, target, weight, drops, pd, iters=iters, batch_size=batch_size,
                        learn_act=learn_act, lr=lr, act_lr=act_lr, reg_weight=reg_weight, beta=beta, warmup=warmup,
                        generator=generator, share_input_mask=share_input_mask, on_step=shown.update)  # fmt: skip
                seconds = time.perf_counter() - t0
                stats.append({"block": block.name, "layers": list(block.layers), "loss_before": before,
                              "loss_after": after, "seconds": seconds})
                left = (time.perf_counter() - started) / (k + 1) * (len(blocks) - k - 1)  # at this pace
                note(f"reconstruct {k + 1}/{len(blocks)} {block.name} ({len(block.layers)} layers): output loss "
                     f"{before:.4g} -> {after:.4g} ({seconds:.1f} s" + (f"; about {_duration(left)} left)" if left else ")"),
                     enabled=progress)
                if k + 1 < len(blocks):
                    xq, xf = propagate(segment_module(qm.net, block), xq), propagate(seg_f, xf)
    finally:
        qm.train(was_training)
    if fused.status.startswith("failed"):
        note(f"block reconstruction ran its activation quantizer eagerly (torch.compile {fused.status}); "
             "with a working C++ compiler it runs several times faster on wide activations", enabled=progress)
    return stats


def _duration(seconds: float) -> str:
    """``"40 s"``, ``"12 min"``, ``"1.5 h"``: a remaining time as a user reads it.

    Example:
        >>> _duration(40.2), _duration(725), _duration(5400)
        ('40 s', '12 min', '1.5 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _output_loss(out: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Squared error summed over channels (dim 1), averaged over images and positions."""
    err = (out - target).pow(2)
    if weight is not None:
        err = err * weight
    return err.sum(dim=1).mean() if err.dim() > 1 else err.mean()


def _reconstruct_block(
    qm: QuantizedModel, block: Block, xq: Tensor, xf: Tensor, target: Tensor, weight: Tensor | None,
    drops: DropPool | None, pd: tuple[nn.Module, Tensor, float, float] | None, *,
    iters: int, batch_size: int, learn_act: bool, lr: float, act_lr: float, reg_weight: float,
    beta: tuple[float, float], warmup: float, generator: torch.Generator, share_input_mask: bool, on_step: Any,
) -> tuple[float, float]:
    """Optimise one unit's rounding (and activation steps); returns the output loss before and after."""
    roundings = [SoftRounding(qm.layer(name)) for name in block.layers]
    acts: dict[str, LearnedActQuant] = {}
    for name in block.act_quantizers:
        fq = qm.net.get_submodule(name)
        if fq.mode == "quant" and fq.calibrated and not fq.spec.dynamic and fq.spec.companding == "none":
            acts[name] = LearnedActQuant(fq, drops, learn_act)
    seg = segment_module(qm.net, block, lambda target, module: acts.get(target, module))
    if fused_available() and min(batch_size, len(xq)) * xq[0].numel() >= MIN_ELEMENTS:
        xq, xf, target, weight = _channels_last(seg, xq, xf, target, weight)

    def evaluate() -> float:
        n = min(len(xq), 256)
        with torch.no_grad():
            return sum(float(_output_loss(seg(xq[i: i + 64]), target[i: i + 64],
                                          None if weight is None else weight[i: i + 64])) * len(xq[i: i + 64])
                       for i in range(0, n, 64)) / n

    with contextlib.ExitStack() as stack:
        before = evaluate()  # round to nearest, calibrated steps (roundings not installed yet)
        for r in roundings:
            stack.enter_context(r.installed())
        params = [{"params": [r.v for r in roundings], "lr": lr}]
        opt = torch.optim.Adam(params)
        scales = [a.scale for a in acts.values() if a.scale.requires_grad]
        opt_s = torch.optim.Adam(scales, lr=act_lr) if scales and act_lr > 0 else None
        on_input = [acts[name] for name in block.input_quantizers if name in acts] if share_input_mask else []
        for a in acts.values():
            a.dropping = True
        for t in range(iters):
            idx = torch.randint(len(xq), (min(batch_size, len(xq)),), generator=generator, device=xq.device)
            x = xq[idx]
            if drops is not None:  # QDrop: the float network's value, unquantized, in the dropped elements
                keep = drops.mask(x.shape, x)
                x = torch.lerp(x, xf[idx], keep)
                for a in on_input:
                    a.input_keep = keep
            if pd is None:
                loss = _output_loss(seg(x), target[idx], None if weight is None else weight[idx])
            else:  # PD-Quant: the same step also runs the undropped input on to the predictions, in float
                tail, float_log_p, pd_weight, temp = pd
                out, out_q = seg(torch.cat([x, xq[idx]])).split(len(idx))
                loss = _output_loss(out, target[idx], None if weight is None else weight[idx])
                loss = loss + pd_weight * F.kl_div(F.log_softmax(tail(out_q) / temp, 1), float_log_p[idx],
                                                   log_target=True, reduction="batchmean")
            b = annealed_beta(t, iters, warmup, beta)
            if b is not None:
                loss = loss + reg_weight * sum(r.regularizer(b) for r in roundings)
            opt.zero_grad(set_to_none=True)
            if opt_s is not None:
                opt_s.zero_grad(set_to_none=True)
                for group in opt_s.param_groups:  # cosine decay to 0 over the iterations
                    group["lr"] = act_lr * 0.5 * (1.0 + math.cos(math.pi * t / iters))
            loss.backward()
            opt.step()
            if opt_s is not None:
                opt_s.step()
            on_step()
        for r in roundings:
            r.harden()
    for a in acts.values():
        a.dropping, a.input_keep = False, None
        a.write_back()
    seg = segment_module(qm.net, block)  # the real quantizers, learned steps, hard weights
    return before, evaluate()


def _channels_last(seg: nn.Module, xq: Tensor, xf: Tensor, target: Tensor,
                   weight: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The unit's caches in channels-last memory where the unit runs in it (else unchanged).

    Why: with the quantizer's element-wise passes compiled (:mod:`quantbench.quant.fused`), the
    convolutions dominate a step, and oneDNN's depthwise and 1x1 kernels run 1.4-1.6x faster on
    channels-last inputs (MobileNet hold-out's widest unit, compiled quantizer: 91-97 -> 66 ms per step
    in NCHW vs channels-last, 2-core AMD EPYC). A unit that cannot take such an input
    (``x.view(n, -1)`` on a feature map) keeps its layout: one two-image trial forward decides. The caches of later units are not touched.
    """
    if xq.dim() != 4:
        return xq, xf, target, weight
    cl = torch.channels_last
    try:
        with torch.no_grad():
            out = seg(xq[:2].contiguous(memory_format=cl))
    except RuntimeError:
        return xq, xf, target, weight
    xq, xf = xq.contiguous(memory_format=cl), xf.contiguous(memory_format=cl)
    if out.dim() == 4 and out.is_contiguous(memory_format=cl):  # the loss then compares like layouts
        target = target.contiguous(memory_format=cl)
        weight = None if weight is None else weight.contiguous(memory_format=cl)
    return xq, xf, target, weight


def _fisher_weight(qm: QuantizedModel, blocks: list[Block], k: int, xq: Tensor, logits: Tensor) -> Tensor:
    """``(1 + g^2 / mean g^2) / 2`` per element of unit ``k``'s output (see the module docstring)."""
    units = [segment_module(qm.net, b) for b in blocks[k:]]
    parts = []
    for i in range(0, len(xq), 64):
        with torch.no_grad():
            z = units[0](xq[i: i + 64])
        z.requires_grad_(True)
        out = z
        for unit in units[1:]:
            out = unit(out)
        kl = F.kl_div(F.log_softmax(out, dim=1), F.softmax(logits[i: i + 64], dim=1), reduction="sum")
        (g,) = torch.autograd.grad(kl, z)
        parts.append(g.detach().pow(2))
    g2 = torch.cat(parts)
    return 0.5 * (1.0 + g2 / g2.mean().clamp(min=1e-30))
