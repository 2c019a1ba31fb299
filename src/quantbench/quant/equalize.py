"""Cross-Layer Equalization (CLE; Nagel et al. 2019, "Data-Free Quantization", section 4.1).

Why: per-tensor and even per-channel low-bit weight grids suffer when the output channels
of one layer (and so the input channels of the next) have very different weight ranges -
common after BatchNorm folding, extreme in depthwise convs (MobileNetV2 is the classic
victim). For two consecutive layers joined by a positively homogeneous function ``f``
(ReLU: ``f(x / s) = f(x) / s`` for ``s > 0``), dividing output channel ``i`` of layer 1 (weights
and bias) by ``s_i`` and multiplying input channel ``i`` of layer 2 by ``s_i`` leaves the network
function unchanged. ``s_i = sqrt(r1_i / r2_i)`` (``r`` = channel weight ranges) makes both
ranges ``sqrt(r1_i r2_i)``, which maximises the product of their relative precisions; a chain
of layers is equalised by iterating over its pairs until the scales settle.

What counts as a pair (on the BN-folded fx graph): a conv/linear whose output feeds only a
chain of single-user, channel-wise scale-equivariant ops - ReLU, LeakyReLU, identity,
dropout, max/average pooling, ``flatten(x, 1)`` (a conv then a linear) - ending in another
conv/linear. A residual ``add`` or any second user ends the chain, because the other branch
would see the rescaled channels. Grouped and depthwise convs are handled on either side.
ReLU6 is *not* homogeneous (it clips at 6); ``relu6="stop"`` ends a chain there (the
function stays exact), ``relu6="relu"`` replaces the ReLU6s on equalised chains by ReLU as
the paper does for MobileNetV2 (the float function then changes slightly: use the
equalised model as the FP32 reference).

Example:
    >>> gm = cross_layer_equalize(model)  # doctest: +SKIP
    >>> qm = prepare(gm, parse_scheme("w4a8"))  # folding a folded GraphModule is a no-op  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from quantbench.errors import QuantbenchError
from quantbench.quant.fold import fold_batchnorm

__all__ = ["EqualizationPair", "cross_layer_equalize", "equalization_pairs", "equalize_folded"]

RELU6_MODES = ("stop", "relu")

_LAYERS = (nn.Conv2d, nn.Linear)
# Channel-wise ops with f(x / s) = f(x) / s for per-channel s > 0 (on an NCHW or NC tensor).
_PASS_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_PASS_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.leaky_relu,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}
_PASS_METHODS = {"relu", "contiguous"}
_FLATTEN_FUNCTIONS = {torch.flatten}


@dataclass(frozen=True)
class EqualizationPair:
    """Two layers equalised together.

    Attributes:
        first: Module name of the layer whose output channels are divided by ``s``.
        second: Module name of the layer whose input channels are multiplied by ``s``.
        flattened: A ``flatten(x, 1)`` lies between them (conv then linear): each channel
            of ``first`` feeds a block of ``second``'s input features.
        relu6: Names of ReLU6 modules on the chain (replaced by ReLU when ``relu6="relu"``).
    """

    first: str
    second: str
    flattened: bool = False
    relu6: tuple[str, ...] = ()


def _is_relu6(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU6)
    return node.op == "call_function" and node.target is F.relu6


def _step(node: fx.Node, modules: dict[str, nn.Module], relu6: str) -> str | None:
    """How ``node`` passes channels on: "pass", "flatten", "relu6", or None (ends the chain)."""
    if node.op == "call_module":
        mod = modules.get(node.target)
        if isinstance(mod, nn.Flatten):
            return "flatten" if mod.start_dim == 1 and mod.end_dim == -1 else None
        if isinstance(mod, _PASS_MODULES):
            if isinstance(mod, nn.LeakyReLU) and mod.negative_slope < 0:
                return None
            return "pass"
    elif node.op == "call_function":
        if node.target in _PASS_FUNCTIONS:
            return "pass"
        if node.target in _FLATTEN_FUNCTIONS:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return "flatten" if start == 1 and end == -1 else None
    elif node.op == "call_method":
        if node.target in _PASS_METHODS:
            return "pass"
        if node.target == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return "flatten" if start == 1 and end == -1 else None
    if _is_relu6(node, modules):
        return "relu6" if relu6 == "relu" else None
    return None


def equalization_pairs(gm: fx.GraphModule, *, relu6: str = "stop") -> list[EqualizationPair]:
    """The layer pairs of a (BN-folded) traced model that CLE can rescale exactly.

    Args:
        gm: A ``torch.fx.GraphModule`` (e.g. from :func:`~quantbench.quant.fold.fold_batchnorm`).
        relu6: ``"stop"`` (a ReLU6 ends a chain) or ``"relu"`` (chains run through ReLU6s,
            which :func:`equalize_folded` then replaces by ReLU).

    Returns:
        Pairs in graph order.
    """
    if relu6 not in RELU6_MODES:
        raise QuantbenchError(f"CLE: relu6 {relu6!r} unknown; expected one of: {', '.join(RELU6_MODES)}")
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    pairs: list[EqualizationPair] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _LAYERS):
            continue
        if calls[node.target] != 1:
            continue  # a shared module: rescaling it would change its other call sites
        cur, flattened, relu6s = node, False, []
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if nxt.op == "call_module" and isinstance(modules.get(nxt.target), _LAYERS):
                if nxt.args and nxt.args[0] is cur and calls[nxt.target] == 1:
                    second = modules[nxt.target]
                    if _compatible(modules[node.target], second, flattened):
                        pairs.append(EqualizationPair(node.target, nxt.target, flattened, tuple(relu6s)))
                break
            if any(a is cur for a in nxt.args[1:]) or any(v is cur for v in nxt.kwargs.values()):
                break  # cur is not the data input of nxt
            if not nxt.args or nxt.args[0] is not cur:
                break
            how = _step(nxt, modules, relu6)
            if how is None or (how == "flatten" and flattened):
                break
            if how == "flatten":
                flattened = True
            elif how == "relu6":
                if nxt.op != "call_module":
                    break  # only ReLU6 modules are replaced
                relu6s.append(nxt.target)
            cur = nxt
    return pairs


def _out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _in_channels(layer: nn.Module) -> int:
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features


def _compatible(first: nn.Module, second: nn.Module, flattened: bool) -> bool:
    c, n_in = _out_channels(first), _in_channels(second)
    if flattened:
        return isinstance(second, nn.Linear) and n_in % c == 0
    return c == n_in


def _grouped_view(layer: nn.Module) -> Tensor:
    """Weight as ``[groups, out/groups, in/groups, rest]``: input channel = g * in/groups + j."""
    w = layer.weight
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    out, in_g = w.shape[0], w.shape[1]
    return w.reshape(groups, out // groups, in_g, -1)


def _output_ranges(layer: nn.Module) -> Tensor:
    return layer.weight.detach().abs().reshape(layer.weight.shape[0], -1).amax(dim=1)


def _input_ranges(layer: nn.Module, channels: int) -> Tensor:
    """Range of the weights reading each of ``channels`` input channels (blocks when flattened)."""
    r = _grouped_view(layer).detach().abs().amax(dim=(1, 3)).reshape(-1)  # per input feature
    return r.reshape(channels, -1).amax(dim=1)


def _scale_inputs(layer: nn.Module, s: Tensor) -> None:
    n_in = _in_channels(layer)
    per_feature = s.repeat_interleave(n_in // s.numel())
    view = _grouped_view(layer)
    groups, _, in_g, _ = view.shape
    view.mul_(per_feature.reshape(groups, 1, in_g, 1))


def _scale_outputs(layer: nn.Module, s: Tensor) -> None:
    layer.weight.div_(s.reshape([-1] + [1] * (layer.weight.dim() - 1)))
    if layer.bias is not None:
        layer.bias.div_(s)


def equalize_folded(
    gm: fx.GraphModule, *, iters: int = 20, tol: float = 1e-4, relu6: str = "stop"
) -> fx.GraphModule:
    """Cross-layer equalise a BN-folded ``GraphModule`` in place and return it.

    This is the hook for the PTQ pipeline: it runs on the output of
    :func:`~quantbench.quant.fold.fold_batchnorm`, before quantizers are inserted (weight
    quantizers are calibrated on the weights at insertion time, so equalising after
    ``prepare`` would leave stale weight scales).

    Args:
        gm: The folded, traced model (modified in place).
        iters: Maximum sweeps over all pairs (a chain converges geometrically).
        tol: Stop when every scale of a sweep is within ``1 +- tol``.
        relu6: ``"stop"`` (exact) or ``"relu"`` (replace ReLU6 on chains by ReLU, as the
            paper does for MobileNetV2; the float function changes slightly).

    Returns:
        ``gm``.
    """
    if not isinstance(gm, fx.GraphModule):
        raise QuantbenchError(
            f"CLE: equalize_folded needs a torch.fx.GraphModule (fold_batchnorm's output), "
            f"got {type(gm).__name__}; use cross_layer_equalize for any model"
        )
    if iters < 1:
        raise QuantbenchError(f"CLE: iters must be >= 1, got {iters}")
    pairs = equalization_pairs(gm, relu6=relu6)
    if relu6 == "relu":
        for name in {n for p in pairs for n in p.relu6}:
            parent, _, leaf = name.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, nn.ReLU())
    with torch.no_grad():
        for _ in range(iters):
            worst = 0.0
            for pair in pairs:
                first, second = gm.get_submodule(pair.first), gm.get_submodule(pair.second)
                c = _out_channels(first)
                r1, r2 = _output_ranges(first), _input_ranges(second, c)
                ok = (r1 > 0) & (r2 > 0)
                s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, 1.0)), torch.ones_like(r1))
                _scale_outputs(first, s)
                _scale_inputs(second, s)
                worst = max(worst, float(s.log().abs().max()))
            if worst < tol:
                break
    gm.recompile()
    return gm


def cross_layer_equalize(
    model: nn.Module, *, iters: int = 20, tol: float = 1e-4, relu6: str = "stop"
) -> fx.GraphModule:
    """Fold BatchNorm into a copy of ``model``, then cross-layer equalise it.

    The result computes the same function as ``model`` (up to float rounding; unless
    ``relu6="relu"``) and can be passed to ``prepare`` as it is: folding an already folded
    GraphModule is a no-op. Use it (not the original model) as the float reference of
    :func:`~quantbench.quant.adaround.adaround` and
    :func:`~quantbench.quant.bias_correction.bias_correction`, whose layer-wise targets
    must come from the same weights.

    Args:
        model: Any traceable model (not modified).
        iters: Maximum sweeps over all pairs.
        tol: Convergence tolerance on the scales.
        relu6: See :func:`equalize_folded`.

    Returns:
        A new BN-folded, equalised ``torch.fx.GraphModule`` in eval mode.

    Example:
        >>> from quantbench.models import build_model
        >>> net = build_model("resnet20").eval()
        >>> gm = cross_layer_equalize(net)
        >>> x = torch.randn(2, 3, 32, 32)
        >>> bool((gm(x) - net(x)).abs().max() < 1e-3)
        True
    """
    return equalize_folded(fold_batchnorm(model), iters=iters, tol=tol, relu6=relu6)
