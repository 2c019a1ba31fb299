"""Layout rules: ``channels-multiple-of-8`` and ``separate-padding``.

Why together: both are about the shape of the data a conv sees (its channel widths, its
padding), and their fixes change layer hyper-parameters rather than which ops run.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
from torch import nn

from .findings import MULTIPLE
from .graph import _LintGraph
from .ops import _DROP_MODULES


def _round_up(c: int) -> int:
    return max(MULTIPLE, math.ceil(c / MULTIPLE) * MULTIPLE)


class _LayoutRules(_LintGraph):
    """The channel-width and padding checks (mixed into :class:`~.linter._Linter`)."""

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

    # ---- rule: separate-padding
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
