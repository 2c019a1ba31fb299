"""Architecture lint for quantization: layers that make integer kernels slow or keep them in float.

Why: a model can be accurate once quantized and still slow. A PhiNet study found exactly that
until depthwise channels were made multiples of 8 and the separate ``ZeroPad2d`` layers were
folded into the convolutions' own padding. The rules below say what an integer engine
(ONNX Runtime QLinearConv, OpenVINO, PyTorch's quantized kernels) does with each pattern,
and how to fix it. They look at the model's torch.fx graph - the same graph
:func:`quantbench.quant.prepare.prepare` quantizes - so "runs in float" here means exactly
what the simulator and the QDQ export do.

Rules (``Finding.rule``):

* ``channels-multiple-of-8``: conv/linear channel counts that are not multiples of 8 (the
  network's input channels and the classifier's classes are exempt). Integer kernels work on
  8/16/32 channels per SIMD register; the remainder runs a slow tail loop or is padded.
  Depthwise convs are flagged even for the output (their channel count is the work).
* ``separate-padding``: a ``ZeroPad2d``/``ConstantPad2d(0)``/``F.pad`` feeding a conv: an extra
  pass over memory, and on quantized tensors a separate (often float) op.
* ``unfused-batchnorm``: a BatchNorm not directly after a conv/linear with a single user:
  it cannot be folded into weights, so it runs in float between dequantize/quantize.
* ``unfused-activation``: an activation after a conv other than ReLU/ReLU6 (Hardswish, SiLU,
  GELU, Sigmoid, ...): integer conv kernels fuse only ReLU/clip; the rest runs as a separate
  op, in float on most engines.
* ``float-op``: modules quantbench (and integer engines) run in float: normalisations other
  than BatchNorm, upsampling, softmax, attention, and modules fx keeps as leaves it cannot see.
* ``untraceable``: the model cannot be traced; nothing can be quantized until it can.

Example:
    >>> findings = lint_model(build_model("phinet"), (3, 32, 32))  # doctest: +SKIP
    >>> print(format_findings(findings))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from quantbench.errors import QuantbenchError

__all__ = ["Finding", "format_findings", "lint_model"]

_FUSED_ACTS = (nn.ReLU, nn.ReLU6, nn.Identity)
_OTHER_ACTS = (nn.Hardswish, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU,
               nn.Mish, nn.PReLU, nn.Softplus)
_FLOAT_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.Upsample, nn.UpsamplingBilinear2d,
                  nn.UpsamplingNearest2d, nn.Softmax, nn.MultiheadAttention, nn.LocalResponseNorm,
                  nn.ConvTranspose2d, nn.Embedding)
_PAD_FUNCS = (F.pad,)
_OK_LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.MaxPool2d, nn.AvgPool2d,
              nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
              nn.AlphaDropout, nn.ZeroPad2d,
              nn.ConstantPad2d, *_FUSED_ACTS, *_OTHER_ACTS, *_FLOAT_MODULES)


@dataclass(frozen=True)
class Finding:
    """One lint result: which rule, where, what is wrong, how to fix it."""

    rule: str
    severity: str  # "error" | "warning" | "info"
    module: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _mod(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    return modules.get(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]


def _next8(n: int) -> int:
    return ((n + 7) // 8) * 8


def _channel_findings(order: list[tuple[str, nn.Module]]) -> list[Finding]:
    out = []
    for i, (name, m) in enumerate(order):
        first, last = i == 0, i == len(order) - 1
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            checks = [] if first else [("input channels", m.in_channels)]
            if not (last and m.out_channels == m.groups == 1):
                checks.append(("output channels", m.out_channels))
            kind = "depthwise conv" if depthwise else ("grouped conv" if m.groups > 1 else "conv")
        elif isinstance(m, nn.Linear):
            checks = [("input features", m.in_features)]
            if not last:
                checks.append(("output features", m.out_features))
            kind = "linear"
        else:
            continue
        bad = [(what, n) for what, n in checks if n % 8]
        if bad:
            desc = ", ".join(f"{what} {n}" for what, n in bad)
            fix = ", ".join(f"{what} {n} -> {_next8(n)}" for what, n in bad)
            extra = " (PhiNet: divisor=8)" if depthwise else ""
            out.append(Finding(
                "channels-multiple-of-8", "warning", name,
                f"{kind} with {desc}: integer kernels process 8/16/32 channels per SIMD register; the "
                "remainder runs a slow tail or is padded",
                f"round to multiples of 8: {fix}{extra}"))
    return out


def _pad_amounts(node: fx.Node, m: nn.Module | None) -> tuple[int, ...] | None:
    if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)):
        if isinstance(m, nn.ConstantPad2d) and m.value != 0:
            return None
        return tuple(int(p) for p in m.padding)
    if node.op == "call_function" and node.target in _PAD_FUNCS:
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0)
        if mode != "constant" or value not in (0, 0.0, None) or not isinstance(pad, (tuple, list)):
            return None
        return tuple(int(p) for p in pad)
    return None


def lint_model(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> list[Finding]:
    """Findings for ``model`` (empty: nothing that hurts integer kernels). ``input_shape`` is unused
    by the rules today but kept so future shape-dependent rules need no API change."""
    from quantbench.quant.fold import trace

    model = model.eval()
    try:
        gm = trace(model)
    except QuantbenchError as exc:
        return [Finding("untraceable", "error", type(model).__name__, str(exc),
                        "make forward traceable by torch.fx (no Python control flow on tensor values), or wrap "
                        "the untraceable part in a leaf module")]
    modules = dict(gm.named_modules())
    findings: list[Finding] = []
    order = [(n.target, modules[n.target]) for n in gm.graph.nodes
             if n.op == "call_module" and isinstance(modules[n.target], (nn.Conv2d, nn.Linear))]
    findings += _channel_findings(order)  # type: ignore[arg-type]
    for node in gm.graph.nodes:
        m = _mod(node, modules)
        name = str(node.target) if node.op == "call_module" else node.name
        users = list(node.users)
        # separate padding feeding a conv
        pads = _pad_amounts(node, m)
        if pads is not None and users and all(isinstance(_mod(u, modules), nn.Conv2d) for u in users):
            conv_name = str(users[0].target)
            symmetric = len(pads) == 4 and pads[0] == pads[1] and pads[2] == pads[3]
            if symmetric:
                fix = (f"delete it and add padding=({pads[2]}, {pads[0]}) to {conv_name} (the same result, "
                       "one op fewer)")
            else:
                fix = (f"asymmetric pads {pads} (TensorFlow 'same'): use {conv_name}'s own symmetric padding "
                       "(shifts the sampling grid by one pixel: fine-tune or retrain; PhiNet: pad_layer=False), or "
                       "export to an engine whose conv takes asymmetric pads")
            findings.append(Finding("separate-padding", "warning", name,
                                    f"a separate zero-padding layer feeds {conv_name}: an extra pass over the tensor "
                                    "and, on quantized models, an op between Q/DQ", fix))
        # BatchNorm that cannot be folded
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            prev = node.args[0] if node.args else None
            pm = _mod(prev, modules) if isinstance(prev, fx.Node) else None
            if not (isinstance(pm, (nn.Conv2d, nn.Linear)) and len(prev.users) == 1):
                findings.append(Finding("unfused-batchnorm", "warning", name,
                                        "BatchNorm not directly after a conv/linear with a single user: it cannot be "
                                        "folded into weights and runs in float between dequantize/quantize",
                                        "place the BatchNorm right after its conv (conv -> BN -> activation)"))
        # activations integer conv kernels do not fuse
        if isinstance(m, _OTHER_ACTS):
            prev = node.args[0] if node.args else None
            after_conv = isinstance(prev, fx.Node) and (
                isinstance(_mod(prev, modules), (nn.Conv2d, nn.Linear))
                or (isinstance(_mod(prev, modules), (nn.BatchNorm2d, nn.BatchNorm1d)) and isinstance(prev.args[0], fx.Node)
                    and isinstance(_mod(prev.args[0], modules), (nn.Conv2d, nn.Linear))))
            findings.append(Finding("unfused-activation", "info" if not after_conv else "warning", name,
                                    f"{type(m).__name__} is not fused into integer conv kernels (only ReLU/ReLU6 "
                                    "are): it runs as a separate op, in float on most engines",
                                    "use ReLU or ReLU6 where accuracy allows, or accept the extra op"
                                    + (" (PhiNet: squeeze_excite=False removes the gates)"
                                       if isinstance(m, (nn.Sigmoid, nn.Hardsigmoid))
                                       else " (PhiNet: h_swish=False)" if isinstance(m, nn.Hardswish) else "")))
        # ops that run in float
        if isinstance(m, _FLOAT_MODULES):
            findings.append(Finding("float-op", "info", name,
                                    f"{type(m).__name__} runs in float: quantized tensors are dequantized before it "
                                    "and requantized after",
                                    "keep it (costs two conversions) or replace it by an integer-friendly op "
                                    "(BatchNorm, nearest upsampling folded into the next conv)"))
        elif m is not None and not isinstance(m, _OK_LEAVES) and not list(m.children()):
            findings.append(Finding("float-op", "info", name,
                                    f"{type(m).__name__} is a custom leaf module: quantbench does not place quantizers "
                                    "inside it, so it runs in float",
                                    "write it with standard torch.nn layers so it can be traced and quantized"))
        if node.op == "call_function" and node.target in (F.softmax, F.layer_norm, F.interpolate, F.gelu, F.silu,
                                                          F.hardswish):
            findings.append(Finding("float-op", "info", node.name,
                                    f"{getattr(node.target, '__name__', node.target)} runs in float between Q/DQ",
                                    "replace by an integer-friendly op where accuracy allows"))
    return findings


def format_findings(findings: list[Finding]) -> str:
    """Human-readable report: one block per finding, grouped by rule, with the fix."""
    if not findings:
        return "no findings: nothing in this model keeps integer kernels slow or in float"
    lines = []
    for rule in dict.fromkeys(f.rule for f in findings):
        group = [f for f in findings if f.rule == rule]
        lines.append(f"{rule} ({len(group)}):")
        for f in group:
            lines.append(f"  [{f.severity}] {f.module}: {f.message}")
            lines.append(f"      fix: {f.fix}")
    counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
    lines.append(", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n))
    return "\n".join(lines)

