"""Compute cost in multiply-accumulates (MACs), counted by PyTorch's own FLOP counter.

Convention (DESIGN.md section 3, say it wherever a number is shown):

* **FLOPs = 2 x MACs.** One multiply-accumulate is one multiply plus one add.
* Only multiply-accumulate operators are counted: convolutions (incl. grouped/depthwise and
  transposed), matrix products (``Linear``, ``matmul``, ``bmm``, attention). BatchNorm, ReLU,
  pooling, additions and bias adds are **not** counted; they are cheap next to the products
  and every published MAC count leaves them out, so our numbers stay comparable.
* Quantization does not change MACs (an INT8 MAC is still a MAC); it changes how fast the
  hardware does them, which is what latency measures.

Why ``torch.utils.flop_counter.FlopCounterMode``: it counts at the ATen operator level, so it
sees functional calls and any module structure (hooks-based counters miss ``F.conv2d`` in a
``forward``), and it is maintained with PyTorch. It reports FLOPs (2 per MAC); we halve them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from quantbench.errors import QuantbenchError

__all__ = ["MacsResult", "count_macs", "macs_vs_batch"]


@dataclass
class MacsResult:
    """MACs of one forward pass.

    Attributes:
        macs: multiply-accumulates for the whole batch.
        flops: ``2 * macs`` (the FLOP convention used throughout quantbench).
        batch_size: images in the counted batch.
        per_image_macs: ``macs // batch_size``.
        by_module: MACs done by each module itself (not by its children), keyed by the
            ``named_modules()`` name (``""`` is the root model's own arithmetic, e.g. a
            functional ``F.linear`` in its ``forward``), for the whole batch; only modules with
            MACs appear, and the values sum to ``macs``.
    """

    macs: int
    flops: int
    batch_size: int
    per_image_macs: int
    by_module: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly dict (``by_module`` included).

        Example:
            >>> count_macs(nn.Linear(4, 2), (1, 1, 4)).as_dict()["macs"]  # doctest: +SKIP
            8
        """
        return {
            "macs": self.macs,
            "flops": self.flops,
            "batch_size": self.batch_size,
            "per_image_macs": self.per_image_macs,
            "by_module": dict(self.by_module),
            "convention": "FLOPs = 2 x MACs; conv/matmul only (no BN, activation, pooling, bias)",
        }


def _self_macs(model: nn.Module, counts: dict[str, int]) -> dict[str, int]:
    """Turn the counter's inclusive per-module totals into per-module *self* MACs.

    The counter names modules ``<RootClass>.<named_modules path>`` and credits every op to all
    enclosing modules; subtracting the children's totals leaves what each module did itself.
    """
    root = type(model).__name__

    def total(name: str) -> int:
        return counts.get(root if name == "" else f"{root}.{name}", 0)

    out: dict[str, int] = {}
    for name, mod in model.named_modules():
        children = {id(c): (f"{name}.{c_name}" if name else c_name) for c_name, c in mod.named_children()}
        own = total(name) - sum(total(child) for child in children.values())
        if own > 0:
            out[name] = own
    return out


def _check_shape(input_shape: tuple[int, ...], batch_size: int) -> None:
    if not 1 <= len(input_shape) <= 4 or any(int(d) <= 0 for d in input_shape):  # (C, H, W), or a split's features
        raise QuantbenchError(f"count_macs: input_shape must be (channels, height, width) > 0, got {input_shape}")
    if batch_size <= 0:
        raise QuantbenchError(f"count_macs: batch_size must be > 0, got {batch_size}")


def count_macs(model: nn.Module, input_shape: tuple[int, int, int], batch_size: int = 1) -> MacsResult:
    """Count the MACs of one forward pass of ``model`` on a ``(batch_size, *input_shape)`` batch.

    The model is run once in eval mode without gradients on a zero tensor of the model's
    dtype/device (the count depends only on shapes); its train/eval mode is restored.

    Args:
        model: an eager PyTorch model.
        input_shape: ``(channels, height, width)`` of one image (or the shape of one sample of a split
            point's features, e.g. ``(512,)`` after a flatten).
        batch_size: images in the batch (MACs of CNNs scale linearly with it).

    Returns:
        A :class:`MacsResult` (FLOPs = 2 x MACs; conv/matmul only).

    Raises:
        QuantbenchError: malformed ``input_shape`` or ``batch_size``, or a model that does not run on it.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
        >>> count_macs(m, (3, 4, 4)).macs  # 4*4*8 outputs x 27 + 128 x 10
        4736
    """
    _check_shape(input_shape, batch_size)
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.zeros((batch_size, *(int(d) for d in input_shape)), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            try:
                model(x)
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:  # the model's own shape error
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise QuantbenchError(f"count_macs: the model does not run on input_shape "
                                      f"{tuple(input_shape)}: {first}") from None
    finally:
        model.train(was_training)
    flops = int(counter.get_total_flops())
    per_module = {name: int(sum(ops.values())) // 2 for name, ops in counter.get_flop_counts().items()}
    macs = flops // 2
    by_module = _self_macs(model, per_module)
    rest = macs - sum(by_module.values())
    if rest > 0:  # ops outside the module tree (e.g. a module called from outside its parent)
        by_module[""] = by_module.get("", 0) + rest
    return MacsResult(
        macs=macs, flops=2 * macs, batch_size=batch_size, per_image_macs=macs // batch_size, by_module=by_module
    )


def macs_vs_batch(
    model: nn.Module, input_shape: tuple[int, int, int], batch_sizes: Iterable[int]
) -> list[MacsResult]:
    """MACs for several batch sizes, from ONE count at batch 1 scaled linearly.

    Cheap (one forward pass in total) and exact for CNN classifiers, whose every layer
    processes each image independently; use :func:`count_macs` with the real batch size for
    models where that does not hold.

    Args:
        model: an eager PyTorch model.
        input_shape: ``(channels, height, width)``.
        batch_sizes: the batch sizes, each > 0.

    Returns:
        One :class:`MacsResult` per batch size, in the given order.

    Example:
        >>> [r.macs for r in macs_vs_batch(nn.Linear(4, 2), (1, 1, 4), [1, 8])]  # doctest: +SKIP
        [8, 64]
    """
    sizes = [int(b) for b in batch_sizes]
    for b in sizes:
        _check_shape(input_shape, b)
    one = count_macs(model, input_shape, batch_size=1)
    return [
        MacsResult(
            macs=one.macs * b,
            flops=one.flops * b,
            batch_size=b,
            per_image_macs=one.per_image_macs,
            by_module={k: v * b for k, v in one.by_module.items()},
        )
        for b in sizes
    ]
