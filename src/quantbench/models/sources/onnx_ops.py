"""ONNX operator -> standard torch op, one small function per operator (the CNN operator set).

Each converter gets the :class:`Ctx` (the graph being built) and the node's inputs as
:class:`V` values: the tensor it holds at the traced batch size - real for constants, computed
eagerly for activations - and its fx node (None for a constant). Computing every value eagerly
while building is what lets shape arithmetic (``Shape -> Gather -> Concat -> Reshape``) fold
into constants and every ``Reshape``'s zeros resolve, with no separate shape-inference pass.
Nodes whose inputs are all constant never reach a converter: :func:`fold` evaluates them
with ONNX's reference implementation.

Example:
    >>> sorted(CONVERTERS)[:3]
    ['Abs', 'Add', 'AveragePool']
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.models.sources.graph import GraphBuilder

__all__ = ["CONVERTERS", "Ctx", "V", "fold"]


@dataclass
class V:
    """A value of the graph: its tensor at the traced batch, and its fx node (None: a constant)."""

    t: torch.Tensor
    node: fx.Node | None = None
    linear: nn.Linear | None = None  # set on a bias-less Linear's output, so a following Add can become its bias

    @property
    def const(self) -> bool:
        return self.node is None


class Ctx:
    """The graph under construction, plus what converters need to know about the ONNX graph."""

    def __init__(self, builder: GraphBuilder, path: str, traced_batch: int, consumers: dict[str, int],
                 opset: int) -> None:
        self.b = builder
        self.path = path
        self.opset = opset
        self.traced_batch = traced_batch
        self.consumers = consumers
        self.node: Any = None  # the ONNX node being converted

    # ------------------------------------------------------------------ errors and attributes

    def fail(self, what: str) -> QuantbenchError:
        n = self.node
        return QuantbenchError(f"{self.path}: ONNX node {n.name or '(unnamed)'!r} ({n.op_type}): {what}")

    def attr(self, name: str, default: Any = None) -> Any:
        from onnx import helper

        for a in self.node.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    def const_input(self, ins: list[V | None], index: int, attr: str | None = None, default: Any = None) -> Any:
        """An operand that must be constant: input ``index`` (newer opsets) or attribute ``attr`` (older ones)."""
        if index < len(ins) and ins[index] is not None:
            v = ins[index]
            if not v.const:
                raise self.fail(f"input {index} must be a constant (it is computed from the image)")
            return v.t.tolist() if v.t.dim() else v.t.item()
        return self.attr(attr, default) if attr else default

    # ------------------------------------------------------------------ emitting

    def n(self, v: V | Any) -> Any:
        """The fx argument for ``v``: its node, a buffer for a constant tensor, a Python number for a scalar."""
        if not isinstance(v, V):
            return v
        if v.node is not None:
            return v.node
        if v.t.numel() == 1 and v.t.dim() == 0:
            return v.t.item()
        v.node = self.b.const(self.node.name or self.node.op_type, v.t)
        return v.node

    @staticmethod
    def _t(v: V | Any) -> Any:
        return v.t if isinstance(v, V) else v

    def module(self, mod: nn.Module, *vals: V) -> V:
        mod.eval()
        with torch.no_grad():
            t = mod(*(v.t for v in vals))
        return V(t, self.b.module(self.node.name or self.node.op_type, mod, *(self.n(v) for v in vals)))

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> V:
        def targ(a: Any) -> Any:
            return [targ(x) for x in a] if isinstance(a, list) else self._t(a)

        def narg(a: Any) -> Any:
            return [narg(x) for x in a] if isinstance(a, list) else self.n(a)

        with torch.no_grad():
            t = fn(*(targ(a) for a in args), **kwargs)
        return V(t, self.b.call(fn, *(narg(a) for a in args), **kwargs))

    def method(self, name: str, v: V, *args: Any, **kwargs: Any) -> V:
        with torch.no_grad():
            t = getattr(v.t, name)(*(self._t(a) for a in args), **kwargs)
        return V(t, self.b.method(name, self.n(v), *(self.n(a) for a in args), **kwargs))

    def reshape(self, v: V, shape: list[int]) -> V:
        with torch.no_grad():
            t = v.t.reshape(shape)
        return V(t, self.b.reshape(self.n(v), shape, traced_batch=self.traced_batch))


Converter = Callable[[Ctx, list[V | None]], list[V]]
CONVERTERS: dict[str, Converter] = {}


def op(*names: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for n in names:
            CONVERTERS[n] = fn
        return fn

    return deco


def fold(node: Any, ins: list[V | None]) -> list[V]:
    """Evaluate a node whose inputs are all constant with ONNX's reference implementation."""
    from onnx.reference import ReferenceEvaluator

    feeds = {name: v.t.numpy() for name, v in zip(node.input, ins, strict=False) if name and v is not None}
    outs = ReferenceEvaluator(node).run(None, feeds)
    return [V(torch.from_numpy(np.array(o))) for o in outs]


# ----------------------------------------------------------------------------- layers with weights


def _pads2d(c: Ctx, x: V, kernel: list[int], strides: list[int], dilations: list[int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from ``pads`` or ``auto_pad``."""
    auto = c.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i, (k, s, d) in enumerate(zip(kernel, strides, dilations, strict=True)):
            size = x.t.shape[2 + i]
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return (out[0][0], out[1][0], out[0][1], out[1][1])
    pads = list(c.attr("pads", [0, 0, 0, 0]))
    if len(pads) != 4:
        raise c.fail(f"expected 4 pads for a 2-D op, got {pads}")
    return tuple(int(p) for p in pads)  # type: ignore[return-value]


def _padded(c: Ctx, x: V, pads: tuple[int, int, int, int], value: float = 0.0) -> tuple[V, tuple[int, int]]:
    """Symmetric pads stay in the op; asymmetric ones become an explicit pad in front of it."""
    t, left, b, r = pads
    if t == b and left == r:
        return x, (t, left)
    return c.call(F.pad, x, [left, r, t, b], value=value), (0, 0)


@op("Conv")
def conv(c: Ctx, ins: list[V | None]) -> list[V]:
    x, w, bias = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    if w is None or not w.const:
        raise c.fail("convolution weights must be a constant initializer")
    if w.t.dim() != 4:
        raise c.fail(f"only 2-D convolutions are supported (weight of rank {w.t.dim()})")
    k = list(w.t.shape[2:])
    strides = list(c.attr("strides", [1, 1]))
    dil = list(c.attr("dilations", [1, 1]))
    groups = int(c.attr("group", 1))
    x, pad = _padded(c, x, _pads2d(c, x, k, strides, dil))
    out_c, in_c = int(w.t.shape[0]), int(w.t.shape[1]) * groups
    mod = nn.Conv2d(in_c, out_c, tuple(k), stride=tuple(strides), padding=pad, dilation=tuple(dil), groups=groups,
                    bias=bias is not None)
    with torch.no_grad():
        mod.weight.copy_(w.t.float())
        if bias is not None:
            mod.bias.copy_(bias.t.float().reshape(-1))
    return [c.module(mod, x)]


@op("ConvTranspose")
def conv_transpose(c: Ctx, ins: list[V | None]) -> list[V]:
    x, w, bias = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    if w is None or not w.const or w.t.dim() != 4:
        raise c.fail("only 2-D transposed convolutions with constant weights are supported")
    groups = int(c.attr("group", 1))
    t, left, b, r = (int(p) for p in c.attr("pads", [0, 0, 0, 0]))
    if t != b or left != r or c.attr("output_shape") is not None:
        raise c.fail("asymmetric pads or output_shape are not supported")
    mod = nn.ConvTranspose2d(int(w.t.shape[0]), int(w.t.shape[1]) * groups, tuple(w.t.shape[2:]),
                             stride=tuple(c.attr("strides", [1, 1])), padding=(t, left),
                             output_padding=tuple(c.attr("output_padding", [0, 0])), groups=groups,
                             dilation=tuple(c.attr("dilations", [1, 1])), bias=bias is not None)
    with torch.no_grad():
        mod.weight.copy_(w.t.float())
        if bias is not None:
            mod.bias.copy_(bias.t.float().reshape(-1))
    return [c.module(mod, x)]


def _linear(c: Ctx, x: V, weight: torch.Tensor, bias: torch.Tensor | None) -> V:
    mod = nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=bias is not None)
    with torch.no_grad():
        mod.weight.copy_(weight.float())
        if bias is not None:
            mod.bias.copy_(bias.float().reshape(-1).expand(int(weight.shape[0])))
    out = c.module(mod, x)
    out.linear = mod if bias is None else None
    return out


@op("Gemm")
def gemm(c: Ctx, ins: list[V | None]) -> list[V]:
    a, b, cc = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    alpha, beta = float(c.attr("alpha", 1.0)), float(c.attr("beta", 1.0))
    if c.attr("transA", 0):
        a = c.method("t", a)
    if b is not None and b.const and (cc is None or cc.const):
        w = b.t if c.attr("transB", 0) else b.t.T
        return [_linear(c, a, alpha * w, None if cc is None else beta * cc.t)]
    bt = c.method("t", b) if c.attr("transB", 0) else b
    y = c.call(torch.matmul, a, bt)
    if alpha != 1.0:
        y = c.call(operator.mul, y, alpha)
    if cc is not None:
        y = c.call(operator.add, y, c.call(operator.mul, cc, beta) if beta != 1.0 else cc)
    return [y]


@op("MatMul")
def matmul(c: Ctx, ins: list[V | None]) -> list[V]:
    a, b = ins
    if b.const and b.t.dim() == 2 and not a.const:
        return [_linear(c, a, b.t.T, None)]
    return [c.call(torch.matmul, a, b)]


@op("BatchNormalization")
def batch_norm(c: Ctx, ins: list[V | None]) -> list[V]:
    x, scale, bias, mean, var = ins[:5]
    if not all(v is not None and v.const for v in (scale, bias, mean, var)):
        raise c.fail("BatchNormalization statistics must be constants (an inference graph)")
    ch = int(mean.t.numel())
    mod = (nn.BatchNorm2d if x.t.dim() == 4 else nn.BatchNorm1d)(ch, eps=float(c.attr("epsilon", 1e-5)))
    with torch.no_grad():
        mod.weight.copy_(scale.t.float().reshape(-1))
        mod.bias.copy_(bias.t.float().reshape(-1))
        mod.running_mean.copy_(mean.t.float().reshape(-1))
        mod.running_var.copy_(var.t.float().reshape(-1))
    return [c.module(mod, x)]


@op("InstanceNormalization")
def instance_norm(c: Ctx, ins: list[V | None]) -> list[V]:
    x, scale, bias = ins
    mod = nn.InstanceNorm2d(int(scale.t.numel()), eps=float(c.attr("epsilon", 1e-5)), affine=True)
    with torch.no_grad():
        mod.weight.copy_(scale.t.float().reshape(-1))
        mod.bias.copy_(bias.t.float().reshape(-1))
    return [c.module(mod, x)]


@op("LayerNormalization")
def layer_norm(c: Ctx, ins: list[V | None]) -> list[V]:
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    axis = int(c.attr("axis", -1)) % x.t.dim()
    mod = nn.LayerNorm(tuple(x.t.shape[axis:]), eps=float(c.attr("epsilon", 1e-5)), bias=bias is not None)
    with torch.no_grad():
        mod.weight.copy_(scale.t.float().reshape(mod.weight.shape))
        if bias is not None:
            mod.bias.copy_(bias.t.float().reshape(mod.bias.shape))
    return [c.module(mod, x)]


@op("PRelu")
def prelu(c: Ctx, ins: list[V | None]) -> list[V]:
    x, slope = ins
    if not slope.const:
        raise c.fail("the slope must be a constant")
    n = int(slope.t.numel())
    if n not in (1, x.t.shape[1] if x.t.dim() > 1 else 1):
        raise c.fail(f"slope of shape {tuple(slope.t.shape)} is not per channel")
    mod = nn.PReLU(n)
    with torch.no_grad():
        mod.weight.copy_(slope.t.float().reshape(-1))
    return [c.module(mod, x)]


# ----------------------------------------------------------------------------- activations

_SIMPLE_MODULES: dict[str, Callable[[Ctx], nn.Module]] = {
    "Relu": lambda c: nn.ReLU(),
    "Sigmoid": lambda c: nn.Sigmoid(),
    "Tanh": lambda c: nn.Tanh(),
    "HardSwish": lambda c: nn.Hardswish(),
    "LeakyRelu": lambda c: nn.LeakyReLU(float(c.attr("alpha", 0.01))),
    "Elu": lambda c: nn.ELU(float(c.attr("alpha", 1.0))),
    "Celu": lambda c: nn.CELU(float(c.attr("alpha", 1.0))),
    "Selu": lambda c: nn.SELU(),
    "Softplus": lambda c: nn.Softplus(),
    "Softsign": lambda c: nn.Softsign(),
    "Mish": lambda c: nn.Mish(),
    "Gelu": lambda c: nn.GELU(approximate="tanh" if c.attr("approximate", "none") == "tanh" else "none"),
    "LRN": lambda c: nn.LocalResponseNorm(int(c.attr("size")), float(c.attr("alpha", 1e-4)),
                                          float(c.attr("beta", 0.75)), float(c.attr("bias", 1.0))),
    "GlobalAveragePool": lambda c: nn.AdaptiveAvgPool2d(1),
    "GlobalMaxPool": lambda c: nn.AdaptiveMaxPool2d(1),
}
_UNARY_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Abs": torch.abs, "Neg": torch.neg,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Erf": torch.erf,
    "Sin": torch.sin, "Cos": torch.cos, "Sign": torch.sign, "Round": torch.round,
}


def _simple(name: str) -> Converter:
    def convert(c: Ctx, ins: list[V | None]) -> list[V]:
        return [c.module(_SIMPLE_MODULES[name](c), ins[0])]

    return convert


def _unary(name: str) -> Converter:
    def convert(c: Ctx, ins: list[V | None]) -> list[V]:
        return [c.call(_UNARY_FUNCTIONS[name], ins[0])]

    return convert


for _n in _SIMPLE_MODULES:
    CONVERTERS[_n] = _simple(_n)
for _n in _UNARY_FUNCTIONS:
    CONVERTERS[_n] = _unary(_n)


@op("HardSigmoid")
def hard_sigmoid(c: Ctx, ins: list[V | None]) -> list[V]:
    alpha, beta = float(c.attr("alpha", 0.2)), float(c.attr("beta", 0.5))
    if math.isclose(alpha, 1 / 6, rel_tol=1e-4) and math.isclose(beta, 0.5):
        return [c.module(nn.Hardsigmoid(), ins[0])]
    y = c.call(operator.add, c.call(operator.mul, ins[0], alpha), beta)
    return [c.call(torch.clamp, y, 0.0, 1.0)]


@op("Clip")
def clip(c: Ctx, ins: list[V | None]) -> list[V]:
    lo = c.const_input(ins, 1, "min", None)
    hi = c.const_input(ins, 2, "max", None)
    lo = None if lo is None or lo <= -3.4e38 else float(lo)
    hi = None if hi is None or hi >= 3.4e38 else float(hi)
    if lo == 0.0 and hi == 6.0:
        return [c.module(nn.ReLU6(), ins[0])]
    if lo == 0.0 and hi is None:
        return [c.module(nn.ReLU(), ins[0])]
    if lo is not None and hi is not None:
        return [c.module(nn.Hardtanh(lo, hi), ins[0])]
    return [c.call(torch.clamp, ins[0], lo, hi)]


@op("Softmax", "LogSoftmax")
def softmax(c: Ctx, ins: list[V | None]) -> list[V]:
    x = ins[0]
    axis = int(c.attr("axis", -1 if c.opset >= 13 else 1))
    if c.opset < 13 and axis % x.t.dim() != x.t.dim() - 1:
        raise c.fail("opset < 13 softmax over several trailing axes is not supported")
    fn = F.softmax if c.node.op_type == "Softmax" else F.log_softmax
    return [c.call(fn, x, dim=axis)]


# ----------------------------------------------------------------------------- arithmetic

_BINARY = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": operator.truediv,
           "Pow": torch.pow}


@op("Add", "Sub", "Mul", "Div", "Pow")
def binary(c: Ctx, ins: list[V | None]) -> list[V]:
    a, b = ins
    kind = c.node.op_type
    if kind == "Add":  # MatMul + Add(bias) -> one Linear with that bias
        for x, k in ((a, b), (b, a)):
            out_features = x.linear.out_features if x.linear is not None else None
            if (out_features and k.const and k.t.numel() in (1, out_features)
                    and c.consumers.get(c.node.input[0 if x is a else 1], 0) == 1):
                with torch.no_grad():
                    x.linear.bias = nn.Parameter(k.t.float().reshape(-1).expand(out_features).clone())
                    return [V(x.t + k.t.float(), x.node)]
    if kind == "Div" and b.const and not a.const and b.t.numel() == 1:
        return [c.call(operator.mul, a, 1.0 / float(b.t.item()))] if float(b.t.item()) != 0 else [
            c.call(operator.truediv, a, b)]
    return [c.call(_BINARY[kind], a, b)]


@op("Sum", "Max", "Min", "Mean")
def nary(c: Ctx, ins: list[V | None]) -> list[V]:
    fn = {"Sum": operator.add, "Mean": operator.add, "Max": torch.maximum, "Min": torch.minimum}[c.node.op_type]
    out = ins[0]
    for v in ins[1:]:
        out = c.call(fn, out, v)
    if c.node.op_type == "Mean" and len(ins) > 1:
        out = c.call(operator.mul, out, 1.0 / len(ins))
    return [out]


# ----------------------------------------------------------------------------- pooling and reductions


@op("MaxPool")
def max_pool(c: Ctx, ins: list[V | None]) -> list[V]:
    if len(c.node.output) > 1 and c.node.output[1]:
        raise c.fail("MaxPool with an Indices output is not supported")
    k = list(c.attr("kernel_shape"))
    strides = list(c.attr("strides", [1] * len(k)))
    dil = list(c.attr("dilations", [1] * len(k)))
    if len(k) != 2:
        raise c.fail("only 2-D max pooling is supported")
    x, pad = _padded(c, ins[0], _pads2d(c, ins[0], k, strides, dil), value=float("-inf"))
    mod = nn.MaxPool2d(tuple(k), tuple(strides), pad, tuple(dil), ceil_mode=bool(c.attr("ceil_mode", 0)))
    return [c.module(mod, x)]


@op("AveragePool")
def avg_pool(c: Ctx, ins: list[V | None]) -> list[V]:
    k = list(c.attr("kernel_shape"))
    if len(k) != 2:
        raise c.fail("only 2-D average pooling is supported")
    strides = list(c.attr("strides", [1, 1]))
    include = bool(c.attr("count_include_pad", 0))
    pads = _pads2d(c, ins[0], k, strides, [1, 1])
    if (pads[0] != pads[2] or pads[1] != pads[3]) and not include:
        raise c.fail("asymmetric pads that are not counted in the average are not supported")
    x, pad = _padded(c, ins[0], pads)
    mod = nn.AvgPool2d(tuple(k), tuple(strides), pad, ceil_mode=bool(c.attr("ceil_mode", 0)),
                       count_include_pad=include)
    return [c.module(mod, x)]


@op("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum")
def reduce(c: Ctx, ins: list[V | None]) -> list[V]:
    x = ins[0]
    axes = c.const_input(ins, 1, "axes", None)
    keep = bool(c.attr("keepdims", 1))
    if axes is None or axes == []:
        if c.attr("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.t.dim()))
    axes = [axes] if isinstance(axes, int) else list(axes)
    dims = tuple(sorted(int(a) % x.t.dim() for a in axes))
    if 0 in dims:
        raise c.fail("reducing over the batch dimension is not supported")
    name = {"ReduceMean": "mean", "ReduceMax": "amax", "ReduceMin": "amin", "ReduceSum": "sum"}[c.node.op_type]
    return [c.method(name, x, dims, keepdim=keep)]

