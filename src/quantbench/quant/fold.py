"""BatchNorm folding on a torch.fx graph.

Integer engines never run BatchNorm after a convolution: they fold it into the conv's
weights and bias before quantizing, so the weights that get quantized are the folded ones.
Our simulation must quantize the same tensors, hence folding comes first.

Example:
    >>> gm = fold_batchnorm(model)  # doctest: +SKIP
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn

from quantbench.errors import QuantbenchError


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; an untraceable model gives an error naming the culprit."""
    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, RuntimeError...)
        where = _failing_module(model)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QuantbenchError(
            f"model {type(model).__name__} cannot be traced by torch.fx{where}: {msg}; "
            "quantization needs a traceable forward (no data-dependent Python control flow)"
        ) from None


def _failing_module(model: nn.Module) -> str:
    """Find the innermost submodule whose forward fails to trace, for the error message."""
    worst = ""
    for name, mod in model.named_modules():
        if not name or not list(mod.children()) and type(mod).__module__.startswith("torch.nn"):
            continue
        try:
            fx.symbolic_trace(mod)
        except Exception:
            worst = name
    return f" (module {worst!r}, {type(model.get_submodule(worst)).__name__})" if worst else ""


def _fuse_conv_bn(conv: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | nn.BatchNorm1d) -> nn.Module:
    """A copy of ``conv`` whose weight and bias absorb ``bn`` (eval-mode statistics)."""
    fused = copy.deepcopy(conv)
    w = fused.weight.detach()
    inv_std = torch.rsqrt(bn.running_var.detach() + bn.eps)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(inv_std)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(inv_std)
    factor = gamma * inv_std
    shape = [-1] + [1] * (w.dim() - 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.weight = nn.Parameter(w * factor.reshape(shape))
    fused.bias = nn.Parameter(beta + (bias - bn.running_mean.detach()) * factor)
    # What was folded, kept (outside the module tree: not in state_dict) so that QAT can
    # re-estimate BatchNorm statistics before freezing them (quantbench.quant.qat).
    fused.__dict__["unfolded"] = (w.clone(), bias.clone(), copy.deepcopy(bn))
    return fused


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """Trace a copy of ``model`` (eval mode) and fold every BatchNorm that follows a conv/linear.

    A BatchNorm whose input is not a conv/linear with a single user is left in place (it then
    runs in float, as it would on an integer engine).
    """
    model = copy.deepcopy(model).eval()
    gm = trace(model)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(
            modules.get(node.target), (nn.BatchNorm2d, nn.BatchNorm1d)
        ):
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        conv = modules.get(prev.target)
        if not isinstance(conv, (nn.Conv2d, nn.Linear)):
            continue
        bn = modules[node.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        _set_submodule(gm, prev.target, _fuse_conv_bn(conv, bn))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        _set_submodule(gm, node.target, nn.Identity())
    gm.graph.lint()
    gm.recompile()
    return gm


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, leaf = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)
