"""Node classification tables: which modules, functions and tensor methods are what.

Why: every rule asks the same questions of a graph node (is it a ReLU, a clip, a float
activation, a padding, free on quantized values?); the answers live here once, as data, so
the rule families cannot disagree on them.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
