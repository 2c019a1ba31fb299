"""Float-op rules: ``unfused-activation``, ``unfused-bn`` and ``unsupported-op``.

Why together: each finds an op that runs in float between quantized values (an activation
integer convs do not fuse, a BatchNorm fold_batchnorm cannot fold, an op prepare() does not
quantize), and each fix is about which op to use instead.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from quantbench.quant.prepare import _QCLASS

from .graph import _LintGraph
from .ops import _BN_FOLDABLE


class _FloatRules(_LintGraph):
    """The activation, BatchNorm and unsupported-op checks (mixed into :class:`~.linter._Linter`)."""

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
