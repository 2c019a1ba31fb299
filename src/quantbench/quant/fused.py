"""The LSQ/QDrop activation quantizer as one compiled loop (``torch.compile``), with an eager fallback.

Why: on a CPU, block reconstruction of a model with wide activations (MobileNet's 144-channel
32x32 maps) spends more time in the activation quantizer's element-wise passes than in the
convolutions: the eager :class:`~quantbench.quant.brecq._ActQuant` reads and writes the whole
tensor about a dozen times per step (divide, round, clamp, compare, the LSQ step gradient, the
QDrop mix), each pass bound by memory bandwidth. Inductor fuses the forward into one loop and the
backward into another: on a 32x144x32x32 tensor, 2 threads, forward and backward took 11 ms instead
of 32 ms with dropping and 5 ms instead of 29 ms without (2-core AMD EPYC, avx512_vnni), with
bit-identical values and the same gradient masks.

What gets compiled is the library's one LSQ formula (:func:`~quantbench.quant.fake.lsq_round_clamp`,
autograd's rules: round with a straight-through gradient, clamp passing gradient inside its bounds)
and QDrop's mix; they give the gradients ``_ActQuant`` writes out by hand up to float rounding
(``g * s * (1/s)`` for ``g``; the step's sum in another order; a unit test compares the two).
Compiling costs a few seconds per process and shape family, so only tensors of at least :data:`MIN_ELEMENTS` elements take this path
and tiny models never pay it. Where compiling fails (no C++ compiler, an unsupported platform) the
reason is kept in :data:`status` and every call returns None, so the caller stays on the eager
quantizer; ``QUANTBENCH_COMPILE=0`` turns the path off.

Example:
    >>> import torch
    >>> x = torch.rand(2, 3, 4, 4, requires_grad=True)
    >>> s, z, lo, hi = torch.tensor(0.1), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(15.0)
    >>> keep = (torch.rand_like(x) < 0.5).float()
    >>> out = lsq_mix(x, s, z, lo, hi, keep)   # the eager form of what gets compiled
    >>> bool(torch.equal(out[keep == 1], x[keep == 1]))
    True
    >>> fused_act_quant(x, s, z, lo, hi, keep) is None   # too small to be worth compiling
    True
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from quantbench.quant.fake import lsq_round_clamp

__all__ = ["MIN_ELEMENTS", "fused_act_quant", "fused_available", "lsq_mix", "status"]

#: Smallest activation (elements per call) worth a compiled kernel: ResNet-20's first stage at batch 32
#: (524,288) takes it; the unit tests' tiny models stay eager and never compile.
MIN_ELEMENTS = 1 << 18

#: What the last call did: ``"unused"``, ``"compiled"``, ``"off"`` (``QUANTBENCH_COMPILE=0``) or
#: ``"failed: <reason>"`` (sticky: the process stays eager).
status = "unused"

_compiled: dict[str, Any] = {}


def lsq_mix(x: Tensor, s: Tensor, z: Tensor, lo: Tensor, hi: Tensor, keep: Tensor) -> Tensor:
    """QDrop: ``x`` where ``keep`` is 1, the LSQ fake-quantized value where it is 0."""
    return torch.lerp(lsq_round_clamp(x, s, z, lo, hi), x, keep)  # exact at 0 and 1, as the eager path


def _function(name: str) -> Any:
    if name not in _compiled:
        _compiled[name] = torch.compile(lsq_mix if name == "mix" else lsq_round_clamp, dynamic=True)
    return _compiled[name]


def fused_available() -> bool:
    """Whether the compiled quantizer may run: not turned off, and compiling has not failed here."""
    return os.environ.get("QUANTBENCH_COMPILE", "1") != "0" and not status.startswith("failed")


def fused_act_quant(x: Tensor, s: Tensor, z: Tensor, lo: Tensor, hi: Tensor, keep: Tensor | None) -> Tensor | None:
    """The compiled quantizer's output (with its autograd graph), or None where the eager one must run.

    None when gradients are off (evaluation passes need no fused backward), ``x`` is smaller than
    :data:`MIN_ELEMENTS`, ``QUANTBENCH_COMPILE=0`` is set, or compiling failed once in this process.
    Arguments as :func:`lsq_mix`; ``s`` and ``z`` already shaped to broadcast against ``x``.
    """
    global status
    if not torch.is_grad_enabled() or x.numel() < MIN_ELEMENTS:
        return None
    if not fused_available():
        status = status if status.startswith("failed") else "off"
        return None
    try:
        out = _function("plain")(x, s, z, lo, hi) if keep is None else _function("mix")(x, s, z, lo, hi, keep)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: stay eager
        status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        return None
    status = "compiled"
    return out
