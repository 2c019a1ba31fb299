"""Architecture lint: the layers of a model that hurt integer kernels, each with its fix.

Why: a network can be accurate once quantized and still slow, because some of its layers
keep integer engines from doing their job. A PhiNet study found its model inefficient until
depthwise channel counts were made multiples of 8 and the ``ZeroPad2d`` in front of each
stride-2 depthwise conv was folded into the conv's own padding. This module finds such
patterns before anyone benchmarks, and says what to change.

The rules agree with what quantbench itself does (:mod:`quantbench.quant.prepare` places the
quantizers, :mod:`quantbench.quant.fold` folds BatchNorm, the ``torch-int8`` and
``onnxruntime`` engines run the result); they were checked on both engines:

``channels-multiple-of-8`` (warning)
    A conv/linear width that is not a multiple of 8: integer kernels work on blocks of 8
    channels (SIMD lanes, packed int8 weights), so the last block is padded and wasted;
    depthwise convs (vectorised across channels) suffer most. The network's input channels
    (the image's) and the head's outputs (the classes) are not the architect's choice and
    are skipped. An input width produced by a conv that is already flagged is not repeated.
``separate-padding`` (warning; info on the network input)
    A padding layer (``ZeroPad2d``, ``ConstantPad2d``, ``F.pad``...) feeding a ``Conv2d``.
    It runs in float between two quantized values, and the conv in front of it can no longer
    write integer output (measured: it runs as a float conv on ONNX Runtime and torch-int8).
    On the float input image it only costs an extra pass, hence an info.
    Zero padding that adds up to symmetric padding folds exactly into ``Conv2d(padding=...)``;
    asymmetric padding (TensorFlow "same") cannot be expressed by the integer convs (symmetric
    only), so the fix is a symmetric padding with the same output size and a fine-tune.
``unfused-bn`` (warning)
    A BatchNorm that :func:`~quantbench.quant.fold.fold_batchnorm` cannot fold: not directly
    after a conv/linear, the conv's pre-BN output also used elsewhere, or no running stats.
    It runs in float as a per-channel multiply-add.
``unfused-activation`` (warning; info for ReLU6/clamp)
    Integer convs fuse only ReLU (torch-int8: ``ConvReLU2d``; ONNX Runtime also folds a
    ReLU6/clamp ``Clip`` into the following ``QuantizeLinear``). Any other activation after a
    conv/linear (SiLU, Hardswish, GELU, Sigmoid...) makes that conv write float output and
    the activation run in float on both engines. ReLU6 after a conv is an info: fused on ONNX
    Runtime, a float conv on torch-int8.
``unsupported-op`` (warning)
    An op that prepare() does not quantize and that is not free on quantized values (free:
    ReLU, max-pool, flatten/reshape/slicing, zero padding, dropout/identity; quantized:
    ``nn.Conv2d``/``nn.Linear`` modules of exactly those types, and add/mul/cat/matmul/mean/
    average pooling, which get quantized inputs). Examples: LayerNorm/GroupNorm, upsampling,
    division, Conv1d, a functional ``F.conv2d`` or a ``Conv2d`` subclass (traced through, so
    its weights stay float). It runs in float: its input is dequantized and its output
    re-quantized by the next quantized consumer.
``untraceable`` (error)
    torch.fx cannot trace the model (prepare() refuses it); the finding names the innermost
    module whose forward fails. The other rules then run on the leaf modules in registration
    order (a best-effort chain, as if the model were an ``nn.Sequential``).
``no-quantizable-layer`` (error)
    No ``nn.Conv2d``/``nn.Linear`` module at all: prepare() refuses the model.

Ops after the network's last quantized consumer (e.g. a softmax after the classifier) are not
reported: prepare() keeps the logits float by design, so they cost nothing extra.

Example:
    >>> from quantbench.models import build_model
    >>> lint_model(build_model("resnet20"), (3, 32, 32))
    []
    >>> print(format_findings(lint_zoo_model("phinet")))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from quantbench.errors import QuantbenchError
from quantbench.quant.fold import trace

# The package's parts, each with one job: findings (vocabulary and report), ops (node
# classification tables), graph (the node view the rules share), layout_rules and float_rules
# (the rule families), linter (the driver and the untraceable fallback).
from .findings import MULTIPLE as MULTIPLE  # re-exported: a module-level name of the former lint.py
from .findings import ROOT, RULES, SEVERITIES, Finding, format_findings
from .linter import _innermost_untraceable, _leaf_chain, _Linter

__all__ = ["RULES", "SEVERITIES", "Finding", "format_findings", "lint_model", "lint_zoo_model"]

# --------------------------------------------------------------------------- public API


def _check_shape(input_shape: Sequence[int] | None) -> tuple[int, int, int] | None:
    if input_shape is None:
        return None
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise QuantbenchError(f"lint: input_shape must be (C, H, W) positive integers, got {input_shape!r}")
    return shape  # type: ignore[return-value]


def lint_model(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[Finding]:
    """List the layers of ``model`` that hurt integer kernels, each with its fix.

    Why a function over the model rather than over a quantized one: the fixes change the
    architecture (retraining), so the lint must run before anything is trained or quantized.

    Args:
        model: Any ``nn.Module``; it is not modified (a copy is traced, in eval mode).
        input_shape: ``(C, H, W)`` of one input. Optional, but with it the lint runs the model
            once on zeros and can tell the image's channels from the first layer's and say
            whether a symmetric padding keeps the output size.

    Returns:
        Findings in execution order (``[]`` for a model integer kernels run well); see the
        module docstring for the rules. An untraceable model gives an ``untraceable`` error
        finding followed by the other rules applied to its leaf modules in registration order.

    Raises:
        QuantbenchError: ``input_shape`` malformed, or the model fails to run on it.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(16, 10))
        >>> lint_model(net, (3, 32, 32))
        []
    """
    shape = _check_shape(input_shape)
    work = copy.deepcopy(model).eval()
    try:
        gm = trace(work)
    except QuantbenchError as exc:
        culprit = _innermost_untraceable(work)
        module = culprit or ROOT
        op = type(work.get_submodule(culprit)).__name__ if culprit else type(work).__name__
        head = Finding(
            "untraceable", "error", module, op,
            f"{exc}; the findings below follow the leaf modules in registration order (best effort)",
            f"make {module}'s forward traceable by torch.fx: decide branches at construction (an attribute "
            "set in __init__) instead of on tensor values, and use tensor ops instead of Python loops over "
            "data; quantbench cannot quantize the model until then",
        )  # fmt: skip
        graph = _leaf_chain(work)
        linter = _Linter(graph, dict(work.named_modules()), shape[0] if shape else None)
        return [head, *linter.run()]
    if shape is not None:
        try:
            param = next(iter(gm.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
            with torch.no_grad():
                ShapeProp(gm).propagate(torch.zeros(1, *shape, device=device))
        except Exception as exc:  # the model's own error, whatever its type
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise QuantbenchError(
                f"lint: {type(model).__name__} does not run on input_shape {shape}: {first}"
            ) from None
        for node in gm.graph.nodes:
            node.meta["shape_known"] = True
    linter = _Linter(gm.graph, dict(gm.named_modules()), shape[0] if shape else None)
    return linter.run()


def lint_zoo_model(
    name: str, *, num_classes: int | None = None, in_channels: int | None = None, **hyper: Any
) -> list[Finding]:
    """Lint the zoo model ``name`` (built with ``hyper``) at its registered input shape.

    Example:
        >>> lint_zoo_model("resnet20")
        []
    """
    from quantbench.models import build_model, model_info

    c, h, w = model_info(name)["input_shape"]
    model = build_model(name, num_classes=num_classes, in_channels=in_channels, **hyper)
    return lint_model(model, (in_channels or c, h, w))
