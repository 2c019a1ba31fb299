"""Bias tuning: the quantized network's biases learned against the float network's predictions.

Why: reconstruction (AdaRound, BRECQ, QDrop) chooses each layer's or block's rounding for that
unit's own output, one unit at a time; what is left is the error the units pass on to each other,
and much of it is a shift (the mean of a 4-bit activation's rounding error is not zero, and the next
units turn a shift into a change of which units fire). Empirical bias correction
(:mod:`quantbench.quant.bias_correction`) removes each layer's shift of its own mean, layer by layer;
it cannot trade one layer's shift against another's for the predictions. Bias tuning (AdaQuant's
"bias tuning", Hubara et al. 2021) learns every bias of the quantized network at once, the rest
frozen (weights on their grid points, activation steps as calibrated or reconstructed), to minimise
``KL(float predictions || quantized predictions)`` on the calibration images: a few hundred to a
few thousand values, so 512 images do not over-fit it, and a deployed model pays nothing for it
(the integer kernels add an int32 bias either way).

Measured (docs/benchmarks/ptq.md, "Bias tuning after reconstruction"): on the first hold-out CNN
W4A4 QDrop the evaluation cross-entropy falls from 1.427 to 1.37 nats and the drop from +1.30 to +0.40
points (500 steps, 37 s), more than any reconstruction variant moved it; tuning the activation steps
the same way made it worse (they are chosen per block already and over-fit at the network level), so
only biases learn. On the shared ResNet-20 after full QDrop it raised the calibration KL and was undone
(below): the straight-through gradient of 4-bit quantizers misleads once the network is that close
to the float one. Hence a tag (``-bt``), not a default.

The calibration KL (every calibration image, no gradient) is measured five times along the way and the
biases with the lowest one are kept, the starting biases included: a step size too large for a model
(the STE gradient of a 4-bit quantizer is a coarse guide) costs the gain, never the network it was given.

Example:
    >>> from quantbench.models import build_model
    >>> from quantbench.quant.prepare import calibrate, prepare
    >>> from quantbench.quant.spec import parse_scheme
    >>> model = build_model("lenet", num_classes=10, in_channels=1).eval()
    >>> calib = torch.randn(64, 1, 8, 8)
    >>> qm = calibrate(prepare(model, parse_scheme("w4a4")), calib)
    >>> out = tune_biases(qm, model, calib, iters=20)
    >>> out["kl_after"] <= out["kl_before"]
    True
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.progress import bar, note
from quantbench.quant.bias_correction import (
    bypass_uncalibrated,
    collect_images,
    float_reference,
    model_device,
)
from quantbench.quant.brecq_blocks import propagate
from quantbench.quant.joins import calibration_kl
from quantbench.quant.prepare import QuantizedModel

__all__ = ["tune_biases", "BIAS_TUNING_ITERS"]

BIAS_TUNING_ITERS = 500  # first hold-out CNN W4A4: 500 steps took the loss from 1.427 to 1.36-1.37 nats
CHECKPOINTS = 5  # the calibration KL is measured this many times (evenly spaced); the best biases are kept


def tune_biases(
    qm: QuantizedModel,
    float_model: nn.Module,
    data: Any,
    *,
    n_images: int | None = 512,
    iters: int = BIAS_TUNING_ITERS,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Learn every bias of ``qm``'s quantized layers against the float model's predictions, in place.

    Run it last, after calibration and any reconstruction (the weights stay where they are, the
    activation steps too). Adam on the biases only, rate cosine-decayed to 0 over ``iters``.

    Args:
        qm: The prepared, calibrated (and possibly reconstructed) model.
        float_model: The float model ``prepare`` received.
        data: Calibration images: a tensor, ``(images, labels)``, a data set or a loader.
        n_images: Calibration images to use (None: all).
        iters: Adam steps.
        lr: Adam rate of the biases (in the units of the layers' outputs).
        batch_size: Images per step.
        seed: Seeds the batch sampling (results are reproducible).
        progress: A bar on stderr and one line with the KL before and after.

    Returns:
        ``{"biases", "values", "kl_before", "kl_after", "kept", "best_step", "seconds"}``: how many bias
        vectors and values learned, the mean KL on the calibration images before and after, whether tuned
        biases were kept (False: no checkpoint lowered the KL and the original biases are back) and
        after which step the kept biases were taken.

    Raises:
        QuantbenchError: Bad arguments, no quantized layer with a bias, or a float model that does
            not match ``qm``.

    Example:
        >>> tune_biases(qm, model, calib, iters=500)["kl_after"]  # doctest: +SKIP
        0.061
    """
    if iters < 1 or batch_size < 1 or not lr > 0:
        raise QuantbenchError(f"bias tuning: need iters >= 1, batch_size >= 1, lr > 0; got {iters}, {batch_size}, {lr}")
    biases = [b for b in (getattr(qm.layer(info.name), "bias", None) for info in qm.layers)
              if isinstance(b, nn.Parameter)]
    if not biases:
        raise QuantbenchError("bias tuning: no quantized layer of this model has a bias to tune")
    ref = float_reference(qm, float_model)
    dev = model_device(qm)
    ref.to(dev)
    images = collect_images(data, n_images).to(dev)
    logits = propagate(ref, images)
    target = F.log_softmax(logits, 1)
    generator = torch.Generator(device=dev).manual_seed(seed)
    started = time.perf_counter()
    grad_state = [(p, p.requires_grad) for p in qm.parameters()]
    originals = [b.detach().clone() for b in biases]
    was_training = qm.training
    qm.eval()

    try:
        with bypass_uncalibrated(qm):
            before = calibration_kl(qm, logits, images)
            for p, _ in grad_state:
                p.requires_grad_(False)
            for b in biases:
                b.requires_grad_(True)
            opt = torch.optim.Adam(biases, lr=lr)
            checks = {max(1, iters * k // CHECKPOINTS) for k in range(1, CHECKPOINTS + 1)}
            best_kl, best, best_step = before, originals, 0
            with bar(total=iters, desc="bias tuning", unit="iter", enabled=progress) as shown:
                for t in range(iters):
                    idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=generator,
                                        device=dev)
                    for group in opt.param_groups:  # cosine decay to 0 over the steps
                        group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * t / iters))
                    loss = F.kl_div(F.log_softmax(qm(images[idx]), 1), target[idx], log_target=True,
                                    reduction="batchmean")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    shown.update()
                    if t + 1 in checks:  # keep the biases whose KL on every calibration image is lowest
                        kl = calibration_kl(qm, logits, images)
                        if kl < best_kl:
                            best_kl, best, best_step = kl, [b.detach().clone() for b in biases], t + 1
            with torch.no_grad():
                for b, value in zip(biases, best, strict=True):
                    b.copy_(value)
            after, kept = best_kl, best_step > 0
    finally:
        for p, state in grad_state:
            p.requires_grad_(state)
            p.grad = None
        qm.train(was_training)
    seconds = time.perf_counter() - started
    note(f"bias tuning: {len(biases)} biases ({sum(b.numel() for b in biases)} values), calibration KL "
         f"{before:.4g} -> {after:.4g}" + ("" if kept else " (not lower: biases left as they were)")
         + f" ({seconds:.1f} s)", enabled=progress)
    return {"biases": len(biases), "values": sum(b.numel() for b in biases), "kl_before": before,
            "kl_after": after, "kept": kept, "best_step": best_step, "seconds": seconds}
