"""Parameter counting.

Why a helper instead of ``sum(p.numel() for p in model.parameters())``: a tensor shared by
two modules (tied weights, a reused layer) is stored once and must be counted once, also when
two distinct ``Parameter`` objects view the same memory. Buffers (BatchNorm running
statistics, ``num_batches_tracked``) are not parameters and are not counted; they do show up
in the file size (:mod:`quantbench.measure.size`).
"""

from __future__ import annotations

from torch import nn
from torch.nn.parameter import UninitializedParameter

from quantbench.errors import QuantbenchError

__all__ = ["count_parameters"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model``, each unique tensor counted once.

    Works on models built on the ``meta`` device (no memory allocated), which makes counting
    large architectures cheap.

    Args:
        model: any ``nn.Module``.
        trainable_only: count only parameters with ``requires_grad=True``.

    Returns:
        The number of scalar parameters.

    Raises:
        QuantbenchError: the model still has lazy (uninitialised) parameters.

    Example:
        >>> lin = nn.Linear(4, 3)
        >>> count_parameters(nn.Sequential(lin, nn.ReLU(), lin))  # the shared layer once
        15
    """
    seen: set[object] = set()
    total = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if isinstance(p, UninitializedParameter):
            raise QuantbenchError(
                f"count_parameters: parameter {name!r} is uninitialised (lazy module); run one forward pass first"
            )
        if trainable_only and not p.requires_grad:
            continue
        # Same memory -> same tensor, even through distinct Parameter objects. Meta tensors
        # have no memory (data_ptr 0), so fall back to object identity for them.
        if p.is_meta or p.data_ptr() == 0:
            key: object = ("id", id(p))
        else:
            key = ("mem", p.device.type, p.data_ptr(), tuple(p.shape), tuple(p.stride()), p.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += p.numel()
    return total
