"""The graph the rules walk: per-node classification, graph walks and finding bookkeeping.

Why: the rule families (:mod:`.layout_rules`, :mod:`.float_rules`) ask the same questions of a
node (a quantized layer? a ReLU? tensor-valued? still reaching a quantizer?) and report the
same way; this base class answers them once, over a traced graph or the fallback chain.
"""

from __future__ import annotations

import operator
from typing import Any

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

# What prepare() quantizes and where it puts activation quantizers: reused, not copied, so the
# lint cannot drift from the placement it describes.
from quantbench.quant.prepare import _QCLASS, _is_join

from .findings import ROOT, Finding
from .ops import (
    _CLIP_FUNCS,
    _CLIP_METHODS,
    _CLIP_MODULES,
    _DROP_MODULES,
    _FLOAT_ACT_FUNCS,
    _FLOAT_ACT_METHODS,
    _FLOAT_ACT_MODULES,
    _FREE_FUNCS,
    _FREE_METHODS,
    _FREE_MODULES,
    _GATE_MODULES,
    _NON_TENSOR_METHODS,
    _PAD_MODULES,
    _RELU_FUNCS,
    _fn_name,
)


class _LintGraph:
    """One graph (traced, or the fallback chain of leaf modules) and what each node is."""

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

    # ---- walks shared by several rules
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
