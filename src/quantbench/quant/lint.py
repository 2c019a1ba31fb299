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
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from quantbench.errors import QuantbenchError
from quantbench.quant.fold import trace

# What prepare() quantizes and where it puts activation quantizers: reused, not copied, so the
# lint cannot drift from the placement it describes.
from quantbench.quant.prepare import _QCLASS, _is_join

__all__ = ["RULES", "SEVERITIES", "Finding", "format_findings", "lint_model", "lint_zoo_model"]

MULTIPLE = 8

SEVERITIES = ("error", "warning", "info")

RULES: dict[str, str] = {
    "channels-multiple-of-8": "conv/linear channel count not a multiple of 8 (wasted SIMD lanes)",
    "separate-padding": "padding layer feeding a conv instead of the conv's own padding",
    "unfused-bn": "BatchNorm that cannot be folded into a preceding conv/linear",
    "unfused-activation": "activation after a conv/linear that integer kernels do not fuse",
    "unsupported-op": "op that quantbench does not quantize: runs in float between quantized layers",
    "untraceable": "torch.fx cannot trace the model, so it cannot be quantized",
    "no-quantizable-layer": "no nn.Conv2d/nn.Linear layer to quantize",
}


@dataclass(frozen=True)
class Finding:
    """One layer that hurts integer kernels.

    Attributes:
        rule: Rule id (a key of :data:`RULES`).
        severity: ``"error"`` (cannot be quantized), ``"warning"`` (slower than it should be on
            integer engines) or ``"info"`` (engine-dependent).
        module: Qualified module name (``model.get_submodule(module)``); for a functional op,
            the module whose ``forward`` calls it (``"<model>"`` for the root).
        op: What the layer is: a module type (``"ZeroPad2d"``), ``"F.interpolate"``,
            ``"Tensor.div"``...
        message: What is wrong, and why it costs.
        fix: What to change, concretely.
    """

    rule: str
    severity: str
    module: str
    op: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        """Plain dict (JSON output)."""
        return asdict(self)


# --------------------------------------------------------------------------- op classification

ROOT = "<model>"

_BN_FOLDABLE = (nn.BatchNorm1d, nn.BatchNorm2d)  # what fold_batchnorm folds
_RELU_FUNCS = {F.relu, torch.relu}
_CLIP_MODULES = (nn.Hardtanh,)  # ReLU6 is a Hardtanh
_CLIP_FUNCS = {F.relu6, F.hardtanh, torch.clamp, torch.clip}
_CLIP_METHODS = {"clamp", "clip"}
_FLOAT_ACT_MODULES = (
    nn.SiLU, nn.Hardswish, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Mish, nn.ELU, nn.SELU,
    nn.CELU, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.Tanhshrink,
)  # fmt: skip
_FLOAT_ACT_FUNCS = {
    F.silu, F.hardswish, F.gelu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardsigmoid,
    F.mish, F.elu, F.selu, F.celu, F.leaky_relu, F.prelu, F.softplus, F.softsign, F.logsigmoid,
}  # fmt: skip
_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.LogSigmoid, nn.Softsign)
_FLOAT_ACT_METHODS = {"sigmoid", "tanh", "sigmoid_", "tanh_"}
_PAD_MODULES = (
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ReflectionPad1d, nn.ReflectionPad2d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.CircularPad1d, nn.CircularPad2d,
)  # fmt: skip
# Free on quantized values: they commute with per-tensor quantization (ReLU, clipping,
# max-pool, zero padding), only move data (reshape, slicing), or are identities in eval mode.
_FREE_MODULES = (
    nn.ReLU, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout, nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle,
    *_PAD_MODULES,
)  # fmt: skip
_FREE_FUNCS = {
    F.relu, torch.relu, F.relu6, F.hardtanh, torch.clamp, torch.clip, F.max_pool1d, F.max_pool2d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, torch.flatten, torch.reshape, torch.transpose,
    torch.permute, torch.squeeze, torch.unsqueeze, torch.chunk, torch.split, torch.narrow, F.pad,
    F.dropout, F.dropout1d, F.dropout2d, F.pixel_shuffle, F.pixel_unshuffle, torch.channel_shuffle,
    operator.getitem, getattr,
}  # fmt: skip
_FREE_METHODS = {
    "relu", "relu_", "clamp", "clip", "flatten", "view", "reshape", "permute", "transpose",
    "contiguous", "squeeze", "unsqueeze", "chunk", "split", "narrow", "expand", "expand_as",
    "view_as", "reshape_as", "to", "float", "type_as", "detach", "size", "dim", "numel",
}  # fmt: skip
_NON_TENSOR_METHODS = {"size", "dim", "numel", "item", "tolist"}
_DROP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _round_up(c: int) -> int:
    return max(MULTIPLE, math.ceil(c / MULTIPLE) * MULTIPLE)


def _fn_name(target: Any) -> str:
    """``F.interpolate``, ``torch.cat``, ``operator.truediv``: how a user would spell it."""
    name = getattr(target, "__name__", repr(target))
    if getattr(F, name, None) is target:
        return f"F.{name}"
    if getattr(torch, name, None) is target:
        return f"torch.{name}"
    if getattr(operator, name, None) is target:
        return f"operator.{name}"
    return name


class _Linter:
    """Runs every rule over one graph (traced, or the fallback chain of leaf modules)."""

    def __init__(
        self,
        graph: fx.Graph,
        modules: dict[str, nn.Module],
        input_channels: int | None,
    ) -> None:
        self.graph = graph
        self.modules = modules
        self.input_channels = input_channels
        self.findings: list[Finding] = []
        self.handled: set[fx.Node] = set()
        nodes = list(graph.nodes)
        self.tensor_valued: dict[fx.Node, bool] = {}
        for n in nodes:  # topological order: inputs are classified first
            self.tensor_valued[n] = self._tensor_valued(n)
        # Reverse pass: does a node's value still reach a quantized layer / a quantized consumer?
        self.reaches_layer: dict[fx.Node, bool] = {}
        self.reaches_quant: dict[fx.Node, bool] = {}
        for n in reversed(nodes):
            self.reaches_layer[n] = any(self.is_layer(u) or self.reaches_layer[u] for u in n.users)
            self.reaches_quant[n] = any(
                self.is_layer(u) or self.is_join(u) or self.reaches_quant[u] for u in n.users
            )

    # ---- classification
    def mod(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]

    def is_layer(self, node: fx.Node) -> bool:
        """A layer prepare() quantizes: a call to an exact ``nn.Conv2d``/``nn.Linear`` module."""
        m = self.mod(node)
        return m is not None and type(m) in _QCLASS

    def is_join(self, node: fx.Node) -> bool:
        return _is_join(node, self.modules)

    def is_bn(self, node: fx.Node) -> bool:
        return isinstance(self.mod(node), nn.modules.batchnorm._BatchNorm)

    def is_relu(self, node: fx.Node) -> bool:
        m = self.mod(node)
        return (
            type(m) is nn.ReLU
            or (node.op == "call_function" and node.target in _RELU_FUNCS)
            or (node.op == "call_method" and node.target in ("relu", "relu_"))
        )

    def is_clip(self, node: fx.Node) -> bool:
        return (
            isinstance(self.mod(node), _CLIP_MODULES)
            or (node.op == "call_function" and node.target in _CLIP_FUNCS)
            or (node.op == "call_method" and node.target in _CLIP_METHODS)
        )

    def is_float_act(self, node: fx.Node) -> bool:
        return (
            isinstance(self.mod(node), _FLOAT_ACT_MODULES)
            or (node.op == "call_function" and node.target in _FLOAT_ACT_FUNCS)
            or (node.op == "call_method" and node.target in _FLOAT_ACT_METHODS)
        )

    def is_gate(self, node: fx.Node) -> bool:
        """A bounded activation used as a gate (squeeze-and-excite): ReLU cannot replace it."""
        return isinstance(self.mod(node), _GATE_MODULES) or (
            node.op in ("call_function", "call_method")
            and getattr(node.target, "__name__", node.target)
            in ("sigmoid", "sigmoid_", "tanh", "tanh_", "hardsigmoid", "logsigmoid", "softsign")
        )

    def is_free(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.mod(node), _FREE_MODULES)
        if node.op == "call_function":
            return node.target in _FREE_FUNCS
        if node.op == "call_method":
            return node.target in _FREE_METHODS
        return node.op in ("placeholder", "output", "get_attr")

    def is_tensor(self, node: fx.Node) -> bool:
        """Whether ``node`` yields a tensor (``x.size(0) // 2`` does not)."""
        return self.tensor_valued.get(node, True)

    def _tensor_valued(self, node: fx.Node) -> bool:
        """From the shapes when the model ran; else from the op and its inputs (already classified)."""
        if "shape_known" in node.meta:
            return "tensor_meta" in node.meta
        if node.op in ("placeholder", "call_module", "get_attr"):
            return True
        if node.op == "call_method" and node.target in _NON_TENSOR_METHODS:
            return False
        if node.op == "call_function" and node.target is getattr:
            return False
        args: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda a: args.append(a) or a)
        if node.op == "call_function" and node.target is operator.getitem:
            return bool(args) and self.tensor_valued.get(args[0], True)
        return any(self.tensor_valued.get(a, True) for a in args)

    def where(self, node: fx.Node) -> tuple[str, str]:
        """(module name, op) for a finding about ``node``."""
        if node.op == "call_module":
            return str(node.target), type(self.mod(node)).__name__
        owner = self.owner(node)[0]
        if node.op == "call_method":
            return owner, f"Tensor.{node.target}"
        return owner, _fn_name(node.target)

    @staticmethod
    def owner(node: fx.Node) -> tuple[str, type | None]:
        """(qualified name, type) of the module whose forward made ``node`` (root: ``<model>``)."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return ROOT, None
        key = next(reversed(stack))
        entry = stack[key]
        if isinstance(entry, tuple) and len(entry) == 2:
            return str(entry[0]), entry[1] if isinstance(entry[1], type) else None
        return str(key), None

    def add(self, rule: str, severity: str, node: fx.Node, message: str, fix: str) -> None:
        module, op = self.where(node)
        self.findings.append(Finding(rule, severity, module, op, message, fix))

    def shape(self, node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    # ---- driver
    def run(self) -> list[Finding]:
        layers = [n for n in self.graph.nodes if self.is_layer(n)]
        if not layers:
            self.findings.append(
                Finding(
                    "no-quantizable-layer",
                    "error",
                    ROOT,
                    "model",
                    "no nn.Conv2d/nn.Linear module: prepare() has nothing to quantize and refuses the model",
                    "build the network from nn.Conv2d/nn.Linear modules (prepare() matches these exact types)",
                )  # fmt: skip
            )
        for node in self.graph.nodes:
            if node in self.handled:
                continue
            if self.is_layer(node):
                self.check_channels(node)
                self.check_epilogue(node)
            elif self.is_bn(node):
                self.check_bn(node)
            elif self.pad_spec(node) is not None:
                self.check_pad(node)
            elif not self.is_free(node) and not self.is_join(node):
                self.check_unsupported(node)
        return list(dict.fromkeys(self.findings))

    # ---- rule: channels-multiple-of-8
    def producer(self, node: fx.Node) -> fx.Node | None:
        """The layer or placeholder whose channels reach ``node``'s input unchanged, if traceable."""
        cur = node.args[0] if node.args else None
        while isinstance(cur, fx.Node):
            if self.is_layer(cur) or cur.op == "placeholder":
                return cur
            if self.is_join(cur) and cur.target is torch.cat:
                return None  # channels are the sum of several producers: check the consumer
            spec = self.pad_spec(cur)
            if spec is not None and len(spec[0]) > 4:
                return None  # pads channels
            cur = cur.args[0] if cur.args else None
        return None

    @staticmethod
    def widths(layer: nn.Module) -> tuple[int, int, int]:
        if isinstance(layer, nn.Conv2d):
            return layer.in_channels, layer.out_channels, layer.groups
        return layer.in_features, layer.out_features, 1  # type: ignore[return-value]

    def check_channels(self, node: fx.Node) -> None:
        layer = self.mod(node)
        assert layer is not None
        cin, cout, groups = self.widths(layer)
        kind = type(layer).__name__
        out_name, in_name = (
            ("out_channels", "in_channels") if kind == "Conv2d" else ("out_features", "in_features")
        )
        src = self.producer(node)
        from_image = (
            src is not None
            and src.op == "placeholder"
            and (self.input_channels is None or cin == self.input_channels)
        )
        in_covered = from_image or (
            src is not None and self.is_layer(src) and self.widths(self.mod(src))[1] == cin  # type: ignore[arg-type]
        )
        head = not self.reaches_layer[node]  # its outputs are the task's (classes), not a choice
        depthwise = groups > 1 and groups == cin == cout
        problems: list[str] = []
        fixes: list[str] = []
        if depthwise:
            if cout % MULTIPLE and not from_image:
                up = _round_up(cout)
                where = (
                    f" (its input comes from {src.target})" if src is not None and self.is_layer(src) else ""
                )
                problems.append(
                    f"depthwise Conv2d with {cout} channels (groups={groups}), not a multiple of {MULTIPLE}: "
                    f"depthwise kernels vectorise across channels, so {cout} channels occupy {up} lanes "
                    f"({100 * (up - cout) // up}% wasted)"
                )
                fixes.append(
                    f"use {up} channels (next multiple of {MULTIPLE}): set in_channels, out_channels and groups "
                    f"to {up} here and in the layer producing its input{where} (e.g. round widths with "
                    f"make_divisible(c, {MULTIPLE}))"
                )
        elif groups > 1:
            per_in, per_out = cin // groups, cout // groups
            if per_in % MULTIPLE or per_out % MULTIPLE:
                problems.append(
                    f"grouped Conv2d (groups={groups}) with {per_in} input / {per_out} output channels per group, "
                    f"not multiples of {MULTIPLE}: each group's kernel pads its channels to a block of {MULTIPLE}"
                )
                fixes.append(
                    f"choose widths or groups so that every group has a multiple of {MULTIPLE} channels "
                    f"(e.g. in_channels={_round_up(per_in) * groups}, out_channels={_round_up(per_out) * groups})"
                )
        else:
            if cout % MULTIPLE and not head:
                up = _round_up(cout)
                problems.append(
                    f"{out_name}={cout} is not a multiple of {MULTIPLE}: integer kernels process channels in "
                    f"blocks of {MULTIPLE} (SIMD lanes, packed int8 weights), so {cout} channels occupy {up} lanes "
                    f"({100 * (up - cout) // up}% wasted)"
                )
                fixes.append(
                    f"set {out_name} to {up} (next multiple of {MULTIPLE}) and the {in_name} of the layers it feeds to match"
                )
            if cin % MULTIPLE and not in_covered:
                up = _round_up(cin)
                problems.append(f"{in_name}={cin} is not a multiple of {MULTIPLE}")
                fixes.append(
                    f"make the input of this layer {up} wide ({in_name}={up}; next multiple of {MULTIPLE})"
                )
        if problems:
            self.add(
                "channels-multiple-of-8", "warning", node,
                f"{kind}({cin}->{cout}" + (f", groups={groups}" if groups > 1 else "") + "): " + "; ".join(problems),
                "; ".join(fixes),
            )  # fmt: skip

    # ---- rule: unfused-activation
    def check_epilogue(self, node: fx.Node) -> None:
        """The activation after a conv/linear (through a foldable BN) must be one that fuses."""
        out = node
        users = list(node.users)
        if len(users) == 1 and self.is_bn(users[0]) and self.bn_problem(users[0]) is None:
            out = users[0]
        for act in list(out.users):
            if self.is_relu(act) or not self.reaches_quant[act]:
                continue  # fused, or past the last quantized consumer (float by design)
            module, op = self.where(act)
            if self.is_clip(act):
                self.handled.add(act)
                self.add(
                    "unfused-activation", "info", act,
                    f"{op} after {node.target}: ONNX Runtime fuses it (the Clip folds into the QuantizeLinear), "
                    f"but torch-int8 fuses only conv+ReLU, so there {node.target} runs as a float layer",
                    f"if you deploy with torch-int8, replace {module} with nn.ReLU() and retrain or fine-tune; "
                    "nothing to change for ONNX Runtime",
                )  # fmt: skip
            elif self.is_float_act(act):
                self.handled.add(act)
                conv_type = type(self.mod(node)).__name__
                if self.is_gate(act):
                    fix = (
                        f"a {op} gate has no ReLU replacement: keep it and accept the cost (a float {conv_type} "
                        "plus a dequantize/quantize pair), or remove the gating block (e.g. squeeze-and-excite)"
                    )
                else:
                    fix = (
                        f"replace {module} with nn.ReLU() (fused into the integer conv; nn.ReLU6 fuses on ONNX "
                        f"Runtime only) and retrain or fine-tune; keeping {op} costs a float {conv_type} plus a "
                        "dequantize/quantize pair"
                    )
                self.add(
                    "unfused-activation", "warning", act,
                    f"{op} after {node.target} is not fused by integer kernels: {node.target} must write float "
                    f"output and {op} runs in float (measured: a float conv on ONNX Runtime and torch-int8)",
                    fix,
                )  # fmt: skip

    # ---- rule: unfused-bn
    def bn_problem(self, node: fx.Node) -> tuple[str, str] | None:
        """Why fold_batchnorm would leave this BatchNorm in place (message, fix), or None."""
        bn = self.mod(node)
        module = str(node.target)
        if not isinstance(bn, _BN_FOLDABLE):
            return (
                f"{type(bn).__name__} is not folded (fold_batchnorm folds BatchNorm1d/BatchNorm2d only)",
                f"use nn.BatchNorm2d/nn.BatchNorm1d directly after the conv/linear, or remove {module}",
            )
        prev = node.args[0] if node.args else None
        if not isinstance(prev, fx.Node) or not (
            prev.op == "call_module" and isinstance(self.mod(prev), (nn.Conv2d, nn.Linear))
        ):
            what = (
                self.where(prev)[1] if isinstance(prev, fx.Node) and prev.op != "placeholder" else "the input"
            )
            return (
                f"{type(bn).__name__} follows {what}, not a conv/linear, so it cannot be folded into weights "
                "and runs in float as a per-channel multiply-add",
                f"move {module} directly after the preceding conv/linear (conv -> BN -> activation), or remove it",
            )
        if len(prev.users) != 1:
            others = ", ".join(self.where(u)[0] for u in prev.users if u is not node)
            return (
                f"the output of {prev.target} before {module} is also used by {others}; folding needs the "
                "BatchNorm to be the conv's only consumer",
                f"take the other branch from the output of {module} (after the BatchNorm), or give it its own conv",
            )
        if not bn.track_running_stats or bn.running_mean is None:
            return (
                f"{module} has no running statistics (track_running_stats=False), so it cannot be folded",
                "construct it with track_running_stats=True and re-estimate the statistics",
            )
        return None

    def check_bn(self, node: fx.Node) -> None:
        problem = self.bn_problem(node)
        if problem is not None and self.reaches_quant[node]:
            self.add("unfused-bn", "warning", node, *problem)

    # ---- rule: separate-padding
    def pad_spec(self, node: fx.Node) -> tuple[tuple[int, ...], str, float] | None:
        """(pad widths as F.pad orders them, mode, value) for a padding op, else None."""
        m = self.mod(node)
        if isinstance(m, _PAD_MODULES):
            pad = m.padding if isinstance(m.padding, tuple) else (m.padding,) * 4
            if isinstance(m, nn.modules.padding._ConstantPadNd):
                return tuple(pad), "constant", float(m.value)
            mode = "reflect" if "Reflection" in type(m).__name__ else "replicate"
            return tuple(pad), ("circular" if "Circular" in type(m).__name__ else mode), 0.0
        if node.op == "call_function" and node.target is F.pad:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
            value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
            if isinstance(pad, (tuple, list)) and all(isinstance(p, int) for p in pad):
                return tuple(pad), str(mode), float(value or 0.0)
        return None

    def check_pad(self, node: fx.Node) -> None:
        spec = self.pad_spec(node)
        assert spec is not None
        pad, mode, value = spec
        if len(pad) not in (2, 4):
            return  # pads channels (e.g. an option-A shortcut), nothing a conv could absorb
        conv_node = node
        while True:  # through eval-mode identities to the consumer
            users = list(conv_node.users)
            if len(users) != 1:
                return
            conv_node = users[0]
            if not isinstance(self.mod(conv_node), _DROP_MODULES):
                break
        conv = self.mod(conv_node)
        if not isinstance(conv, nn.Conv2d) or not self.is_layer(conv_node):
            return
        module, op = self.where(node)
        before = self.conv_before(node)
        severity = "warning"
        if self.from_input(node):
            # On the float image, before the first quantizer: one extra pass, nothing unfused.
            severity = "info"
            cost = f"{op} costs an extra pass over the float input before the first quantizer"
        else:
            cost = f"{op} runs in float between quantized values"
        if before is not None:
            cost += (
                f", and {before} in front of it can no longer write integer output (it runs as a float conv)"
            )
        if mode != "constant" or value != 0.0:
            kind = f"{mode} padding" if mode != "constant" else f"constant padding with value {value:g}"
            self.add(
                "separate-padding", severity, node,
                f"{kind} before {conv_node.target}: integer convs pad with zeros only, so it cannot be "
                f"folded; {cost}",
                f"if accuracy allows, remove {module} and use zero padding in the conv "
                f"({conv_node.target}: Conv2d(padding=...)); otherwise keep it and accept the float op",
            )  # fmt: skip
            return
        pl, pr = pad[0], pad[1]
        pt, pb = (pad[2], pad[3]) if len(pad) == 4 else (0, 0)
        ph, pw = self.conv_padding(conv)
        if ph is None or pw is None or conv.padding_mode != "zeros":
            self.add(
                "separate-padding", severity, node,
                f"zero padding before {conv_node.target}; {cost}",
                f"remove {module} and put the padding in {conv_node.target}'s own padding (padding_mode='zeros')",
            )  # fmt: skip
            return
        top, bottom, left, right = pt + ph[0], pb + ph[1], pl + pw[0], pr + pw[1]
        desc = f"{op}(left={pl}, right={pr}, top={pt}, bottom={pb})"
        if top == bottom and left == right:
            self.add(
                "separate-padding", severity, node,
                f"{desc} before {conv_node.target}: {cost}; it folds exactly into the conv's padding",
                f"remove {module} and set {conv_node.target} = Conv2d(..., padding=({top}, {left})) "
                "(same output, same weights)",
            )  # fmt: skip
            return
        sym_h = self.symmetric(conv, 0, top, bottom, self.shape(node.args[0]), -2)
        sym_w = self.symmetric(conv, 1, left, right, self.shape(node.args[0]), -1)
        self.add(
            "separate-padding", severity, node,
            f"{desc} before {conv_node.target} is asymmetric (top/bottom {top}/{bottom}, left/right "
            f"{left}/{right} with the conv's own padding), which integer convs cannot express (symmetric "
            f"padding only); {cost}",
            f"remove {module} and set {conv_node.target} = Conv2d(..., padding=({sym_h[0]}, {sym_w[0]}))"
            f"{sym_h[1] or sym_w[1]}; the sampling grid shifts by one pixel, so fine-tune or retrain "
            "(the weights were learned with the asymmetric alignment)",
        )  # fmt: skip

    @staticmethod
    def conv_padding(conv: nn.Conv2d) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """The conv's own (before, after) padding per spatial dim; None when not a fixed amount."""
        if isinstance(conv.padding, str):
            if conv.padding == "valid":
                return (0, 0), (0, 0)
            out = []
            for d, k in zip(conv.dilation, conv.kernel_size, strict=True):  # "same" (stride 1)
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))
            return out[0], out[1]
        return (conv.padding[0], conv.padding[0]), (conv.padding[1], conv.padding[1])

    @staticmethod
    def symmetric(
        conv: nn.Conv2d, dim: int, before: int, after: int, in_shape: tuple[int, ...] | None, axis: int
    ) -> tuple[int, str]:
        """A symmetric padding for one dim and a note on the output size it gives."""
        if before == after:
            return before, ""
        k, s, d = conv.kernel_size[dim], conv.stride[dim], conv.dilation[dim]
        candidates = [math.ceil((before + after) / 2), (before + after) // 2]
        if in_shape is None:
            return candidates[0], " (check the output size)"
        size = in_shape[axis]

        def out(p_total: int) -> int:
            return (size + p_total - d * (k - 1) - 1) // s + 1

        want = out(before + after)
        for p in candidates:
            if out(2 * p) == want:
                return p, f" (same {want}-pixel output for this {size}-pixel input)"
        p = candidates[0]
        return p, f" (output becomes {out(2 * p)} instead of {want} pixels: adapt the rest of the network)"

    def from_input(self, node: fx.Node) -> bool:
        """Whether ``node``'s input is the network input (through free ops only)."""
        cur = node.args[0] if node.args else None
        while isinstance(cur, fx.Node) and cur.op != "placeholder":
            if not self.is_free(cur) or self.is_join(cur):
                return False
            cur = cur.args[0] if cur.args else None
        return isinstance(cur, fx.Node)

    def conv_before(self, node: fx.Node) -> str | None:
        """The conv/linear whose output reaches ``node`` through elementwise ops only, if any."""
        cur = node.args[0] if node.args else None
        while isinstance(cur, fx.Node) and len(cur.users) == 1:
            if self.is_layer(cur):
                return str(cur.target)
            if not (self.is_bn(cur) or self.is_relu(cur) or self.is_clip(cur) or self.is_float_act(cur)
                    or isinstance(self.mod(cur), _DROP_MODULES)):  # fmt: skip
                return None
            cur = cur.args[0] if cur.args else None
        return None

    # ---- rule: unsupported-op
    def check_unsupported(self, node: fx.Node) -> None:
        if node.op not in ("call_module", "call_function", "call_method"):
            return
        if not self.reaches_quant[node] or not self.is_tensor(node):
            return
        module, op = self.where(node)
        m = self.mod(node)
        owner = self.owner(node)[1]
        is_conv_like = isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)) or (
            node.op == "call_function"
            and node.target in (F.conv1d, F.conv2d, F.conv3d, F.linear, torch.conv2d)
        )
        if m is not None and type(m) not in _QCLASS and isinstance(m, (nn.Conv2d, nn.Linear)):
            base = "nn.Conv2d" if isinstance(m, nn.Conv2d) else "nn.Linear"
            self.add(
                "unsupported-op",
                "warning",
                node,
                f"{op} is a subclass of {base}; prepare() quantizes the exact type only, so its weights stay float",
                f"use a plain {base} for {module}",
            )
        elif (
            is_conv_like
            and owner is not None
            and issubclass(owner, (nn.Conv2d, nn.Linear))
            and node.op != "call_module"
        ):
            base = "nn.Conv2d" if issubclass(owner, nn.Conv2d) else "nn.Linear"
            self.add(
                "unsupported-op",
                "warning",
                node,
                f"{owner.__name__} (a subclass of {base}) is traced through its forward, so prepare() sees a "
                f"functional {op} and leaves it in float with float weights",
                f"use a plain {base} for {module} and move any extra behaviour into a separate module",
            )
        elif is_conv_like:
            if node.op == "call_module":
                fix = (
                    f"express {module} as an nn.Conv2d (a Conv1d is a Conv2d with a 1xK kernel)"
                    if isinstance(m, nn.modules.conv._ConvNd)
                    else f"replace {module} with nn.Conv2d/nn.Linear"
                )
                what = f"{op} is not quantized: prepare() quantizes nn.Conv2d and nn.Linear modules only"
            else:
                fix = f"hold the weights in an nn.Conv2d/nn.Linear module in {module} instead of calling {op}"
                what = (
                    f"functional {op} is not quantized: prepare() quantizes nn.Conv2d/nn.Linear modules only"
                )
            self.add("unsupported-op", "warning", node, f"{what}; it runs in float with float weights", fix)
        else:
            act = " activation" if self.is_float_act(node) else ""
            label = module if node.op == "call_module" else f"{op} in {module}"
            before = self.conv_before(node)
            also = (
                f"; it sits between {before} and the next quantizer, so {before} writes float output"
                if before
                else ""
            )
            self.add(
                "unsupported-op", "warning", node,
                f"{op}{act} is not quantized by quantbench (no integer kernel in its engines): it runs in "
                f"float, its input dequantized and its output re-quantized by the next quantized layer{also}",
                f"runs in float: a dequantize/quantize pair is inserted around {label}; {self.hint(node)}",
            )  # fmt: skip

    def hint(self, node: fx.Node) -> str:
        """The quantized alternative to a float op, when there is one."""
        m = self.mod(node)
        name = type(m).__name__ if m is not None else str(getattr(node.target, "__name__", node.target))
        if self.is_float_act(node):
            return "use nn.ReLU (free on quantized values) if accuracy allows, or accept the float op"
        if "Norm" in name or name in ("layer_norm", "group_norm", "instance_norm", "local_response_norm"):
            return "use a BatchNorm2d directly after the preceding conv (folded into its weights), or accept the float op"
        if name in ("truediv", "div", "div_"):
            return "divide by a constant as a multiplication by its reciprocal (mul is quantized)"
        if name in ("sub", "rsub", "sub_"):
            return "subtract as an addition of the negated value (add is quantized), or accept the float op"
        if "Upsample" in name or name in ("interpolate", "upsample"):
            return (
                "quantbench's engines have no integer resize: accept the float op (cheap next to the convs)"
            )
        return "keep it if the model needs it (cost: one float op plus a re-quantize), or replace it with ops quantbench quantizes (conv, linear, add, mul, cat, average pooling) or free ones (ReLU, max-pool, reshape)"


# --------------------------------------------------------------------------- fallback (untraceable)


def _innermost_untraceable(model: nn.Module) -> str:
    """The deepest submodule whose own forward fails to trace ("" when only the root fails)."""
    worst, depth = "", -1
    for name, mod in model.named_modules():
        if not name or (not list(mod.children()) and type(mod).__module__.startswith("torch.nn")):
            continue
        try:
            fx.symbolic_trace(mod)
        except Exception:  # fx raises many types
            d = name.count(".")
            if d > depth:
                worst, depth = name, d
    return worst


def _leaf_chain(model: nn.Module) -> fx.Graph:
    """The model's leaf modules in registration order, as if it were an ``nn.Sequential``."""
    tracer = fx.Tracer()
    graph = fx.Graph()
    x = graph.placeholder("x")

    def visit(prefix: str, mod: nn.Module) -> None:
        nonlocal x
        for name, child in mod.named_children():
            qual = f"{prefix}.{name}" if prefix else name
            if tracer.is_leaf_module(child, qual) or not list(child.children()):
                x = graph.call_module(qual, (x,))
            else:
                visit(qual, child)

    visit("", model)
    graph.output(x)
    return graph


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


def format_findings(findings: Iterable[Finding]) -> str:
    """Human-readable report: one entry per finding (module, what is wrong, the fix), then counts."""
    items = list(findings)
    if not items:
        return "no findings: nothing in this model hurts integer kernels"
    lines: list[str] = []
    for f in items:
        lines.append(f"{f.severity}: {f.module} ({f.op}) [{f.rule}]")
        lines.append(f"    {f.message}")
        lines.append(f"    fix: {f.fix}")
    counts = {s: sum(f.severity == s for f in items) for s in SEVERITIES}
    summary = ", ".join(f"{n} {s}{'s' if n != 1 and s != 'info' else ''}" for s, n in counts.items() if n)
    lines.append(f"{len(items)} finding{'s' if len(items) != 1 else ''}: {summary}")
    return "\n".join(lines)
