"""Export models to LiteRT (TensorFlow Lite) flatbuffers with litert-torch: fp32, dynamic, and int8 with OUR scales.

Why LiteRT: it is the runtime of phones and small Arm boards (XNNPACK kernels), and its Python
wheel ``ai-edge-litert`` installs where PyTorch does not, so a device bundle can carry ``.tflite``
files beside the ONNX ones.

* ``fp32``: ``litert_torch.convert`` of the float model.
* ``dynamic``: LiteRT's own dynamic-range scheme, through litert-torch's PT2E quantizer
  (``is_dynamic=True``, per-channel int8 weights; activations quantized per batch at run time).
  Like ONNX Runtime's ``dynamic`` variant it is the engine's scheme, not our calibration.
* ``int8``: the prepared :class:`~quantbench.quant.prepare.QuantizedModel` with every activation
  quantizer replaced, at the same place, by PyTorch's ``quantized_decomposed``
  ``quantize_per_tensor -> dequantize_per_tensor`` pair with OUR scale and zero point (unsigned
  8-bit codes become int8 codes with the zero point moved by -128: the same grid), and every
  quantized conv/linear weight by ``quantize_per_channel -> dequantize_per_channel`` of a float
  weight that lies exactly on our grid (so the quantize reproduces our integer codes). That is
  the graph PT2E's ``convert_pt2e`` produces, so litert-torch's STATIC conversion fuses it into
  int8 ``CONV_2D``/``FULLY_CONNECTED``/``ADD`` kernels; the converter derives int32 biases on the
  ``s_in * s_w`` grid, as every integer engine does. Where a quantized value reaches the model
  input, the converter makes the input tensor itself int8: the session quantizes images with
  that tensor's scale (round half to even, as our simulation does) before ``invoke``.

Formats refused with the reason (as for QDQ ONNX): companded or dynamic quantizers, more than
8 bits, per-channel activations, unsigned or asymmetric weights. Fewer than 8 bits: 8-bit
containers restricted to their range (a clamp before the quantize), no speed gain.

Example:
    >>> path = export_tflite(Deployable(model, qm, (3, 32, 32)), "int8", Path("out"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import operator
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from quantbench.engines.base import Deployable
from quantbench.engines.export_qdq import check_exportable, export_net, weight_codes
from quantbench.engines.native_stderr import held_stderr
from quantbench.errors import QuantbenchError
from quantbench.quant.fake import FakeQuant

__all__ = ["FMT", "export_tflite", "import_litert_torch"]

FMT = "LiteRT export"


def import_litert_torch() -> Any:
    """``litert_torch``, imported quietly (its progress bars and torchao's optional-kernel notices are noise here)."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with _quiet():
            import litert_torch
            import torch.ao.quantization.fx._decomposed  # noqa: F401  registers torch.ops.quantized_decomposed
    except ImportError as exc:
        raise QuantbenchError(f"LiteRT export needs litert-torch: pip install 'quantbench[litert]' ({exc})") from None
    return litert_torch


def _on_failure(text: str, failed: bool) -> str:
    """The converter's native stderr, shown only when the conversion failed (its last 4,000 characters)."""
    return text[-4000:] if failed and text.strip() else ""


@contextlib.contextmanager
def _quiet():
    """Silence Python warnings, logging below ERROR, the converter's prints and the native libraries'
    stderr (kept and replayed if the block fails) for one block."""
    loggers = [logging.getLogger(), logging.getLogger("torch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), held_stderr(_on_failure):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class _ActQ(nn.Module):
    """An activation FakeQuant as ``quantize_per_tensor -> dequantize_per_tensor`` (int8, our grid)."""

    def __init__(self, fq: FakeQuant, name: str) -> None:
        super().__init__()
        spec = fq.spec
        check_exportable(spec, f"activation quantizer {name}", FMT)
        if spec.per_channel:
            raise QuantbenchError(f"{FMT}: activation quantizer {name} is per-channel; only per-tensor is supported")
        if not fq.calibrated:
            raise QuantbenchError(f"{FMT}: activation quantizer {name} is not calibrated; run calibrate() first")
        scale, zp = fq.qparams()
        if scale.dim() != 0:
            raise QuantbenchError(f"{FMT}: activation quantizer {name} has {scale.numel()} scales; expected one")
        shift = 0 if spec.signed else -128  # u8 code c == i8 code c - 128 with zero point zp - 128
        self.scale = float(scale)
        self.zero_point = int(zp) + shift
        self.qmin, self.qmax = spec.qmin + shift, spec.qmax + shift
        self.clip: tuple[float, float] | None = None
        if (self.qmin, self.qmax) != (-128, 127):  # fewer bits: restrict the 8-bit container
            s, z = self.scale, self.zero_point
            self.clip = (float(np.float32((self.qmin - z) * s)), float(np.float32((self.qmax - z) * s)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        if self.clip is not None:
            x = torch.clamp(x, *self.clip)
        q = qd.quantize_per_tensor(x, self.scale, self.zero_point, -128, 127, torch.int8)
        return qd.dequantize_per_tensor(q, self.scale, self.zero_point, -128, 127, torch.int8)


class _LayerQ(nn.Module):
    """A QConv2d/QLinear whose weight is ``quantize_per_channel -> dequantize_per_channel`` of our grid."""

    def __init__(self, layer: nn.Module, name: str, in_scale: torch.Tensor | None) -> None:
        super().__init__()
        codes, scale, zp, axis = weight_codes(layer, name, FMT)
        if codes.dtype != torch.int8 or bool((zp != 0).any()):
            raise QuantbenchError(f"{FMT}: the weight of {name} is unsigned or asymmetric; LiteRT int8 weights "
                                  "are signed with zero point 0 (use a symmetric signed weight spec)")
        self.axis = axis
        shape = [-1] + [1] * (codes.dim() - 1)
        s = scale.reshape(shape) if axis is not None else scale
        # Float weights exactly on our grid: the graph's quantize gives back our integer codes.
        self.register_buffer("weight", codes.to(torch.float32) * s)
        self.register_buffer("weight_scale", scale.to(torch.float32).reshape(-1) if axis is not None else scale)
        self.register_buffer("weight_zero_point", torch.zeros(codes.shape[0] if axis is not None else 1,
                                                              dtype=torch.int64))
        self.register_buffer("bias", layer.bias.detach().to(torch.float32).clone() if layer.bias is not None
                             else None)
        self.is_conv = isinstance(layer, nn.Conv2d)
        if self.is_conv:
            if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise QuantbenchError(f"{FMT}: conv {name} uses padding {layer.padding!r}/{layer.padding_mode!r}; "
                                      "only explicit zero padding is supported")
            self.conv = dict(stride=tuple(layer.stride), padding=tuple(layer.padding),
                             dilation=tuple(layer.dilation), groups=int(layer.groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        if self.axis is not None:
            q = qd.quantize_per_channel(self.weight, self.weight_scale, self.weight_zero_point, self.axis,
                                        -128, 127, torch.int8)
            w = qd.dequantize_per_channel(q, self.weight_scale, self.weight_zero_point, self.axis, -128, 127,
                                          torch.int8)
        else:
            s = float(self.weight_scale)
            w = qd.dequantize_per_tensor(qd.quantize_per_tensor(self.weight, s, 0, -128, 127, torch.int8),
                                         s, 0, -128, 127, torch.int8)
        if self.is_conv:
            return F.conv2d(x, w, self.bias, **self.conv)
        return F.linear(x, w, self.bias)


_SAME_SCALE_FUNCS = {operator.getitem, F.pad, torch.flatten, torch.reshape, F.max_pool2d, torch.max_pool2d}
_SAME_SCALE_METHODS = {"view", "reshape", "flatten"}
_SAME_SCALE_MODULES = (nn.MaxPool2d, nn.Flatten, nn.Identity)


def _same_scale(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """An op that commutes with per-tensor quantization (slicing, zero padding, reshapes, max-pool)."""
    if node.op == "call_function":
        return node.target in _SAME_SCALE_FUNCS
    if node.op == "call_method":
        return node.target in _SAME_SCALE_METHODS
    return node.op == "call_module" and isinstance(modules.get(node.target), _SAME_SCALE_MODULES)


def _same_grid(a: nn.Module | None, b: _ActQ) -> bool:
    return isinstance(a, _ActQ) and (a.scale, a.zero_point, a.clip) == (b.scale, b.zero_point, b.clip)


def _quantize_before_same_scale_ops(net: nn.Module) -> int:
    """Repeat a quantizer in front of the slicing/padding/reshape op it follows; returns the copies made.

    Why: LiteRT's int8 kernels for these ops need the same scale on input and output, and the
    converter refuses ``DQ(scale A) -> pad -> Q(scale B)`` (ResNet-20's zero-padded shortcut).
    ``Q_B(pad(x)) == pad(Q_B(x))`` exactly (zero is on every grid; slicing and reshapes move
    values; max-pool commutes with any monotone rounding), so putting a copy of ``Q_B`` in front
    computes the same values and leaves a requantize (A -> B) that LiteRT runs in integers.
    """
    if not isinstance(net, fx.GraphModule):
        return 0
    modules = dict(net.named_modules())
    copies = 0
    changed = True
    while changed:
        changed = False
        for node in list(net.graph.nodes):
            users = list(node.users)
            if not (_same_scale(node, modules) and len(users) == 1 and users[0].op == "call_module"
                    and isinstance(modules.get(users[0].target), _ActQ)):
                continue
            src, quant = node.args[0], modules[users[0].target]
            if not isinstance(src, fx.Node) or (src.op == "call_module" and _same_grid(modules.get(src.target), quant)):
                continue  # already on this grid
            name = f"{users[0].target}_before_{node.name}".replace(".", "_")
            net.add_submodule(name, copy.deepcopy(modules[users[0].target]))
            modules[name] = net.get_submodule(name)
            with net.graph.inserting_before(node):
                q = net.graph.call_module(name, (src,))
            node.replace_input_with(src, q)
            copies += 1
            changed = True
    if copies:
        net.graph.lint()
        net.recompile()
    return copies


def _pt2e_dynamic(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, Any]:
    """LiteRT's dynamic-range scheme: litert-torch's PT2E quantizer, per-channel int8 weights."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    graph = torch.export.export(model, (x,)).module()
    prepared = prepare_pt2e(graph, quantizer)
    prepared(x)
    converted = convert_pt2e(prepared, fold_quantize=False)
    return converted, QuantConfig(pt2e_quantizer=quantizer)


def _static_config() -> Any:
    """The quant config that makes the converter fuse a Q/DQ graph into int8 kernels (``qdq_conversion_mode=STATIC``)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    return QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)))


_CACHE: OrderedDict[str, bytes] = OrderedDict()
_CACHE_ENTRIES = 32


def _content_key(model: Deployable, variant: str, batch: int) -> str:
    """A hash of everything the converted file depends on (weights, scales, variant, shape, batch)."""
    h = hashlib.sha256(f"{variant}|{batch}|{model.input_shape}|{type(model.float_model).__name__}".encode())
    parts = [model.float_model] + ([model.quantized] if variant == "int8" else [])
    for module in parts:
        for name, t in module.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                     if t.numel() else b"")
    return h.hexdigest()


def export_tflite(model: Deployable, variant: str, workdir: Path, *, batch: int = 1) -> Path:
    """Write ``<name>_<variant>_b<batch>.tflite`` (``variant``: fp32, dynamic, int8) into ``workdir``.

    The file has a fixed batch size: converted graphs bake the batch into slices and reshapes
    (a ResNet-20 converted at batch 1 and resized to 100 ran, and was wrong), and litert-torch
    cannot lower quantize ops with a symbolic batch axis. Sessions and bundles convert once per
    batch size; identical requests in one process (same weights, scales, variant, batch) reuse the
    bytes of the first conversion, which takes seconds.

    Raises:
        QuantbenchError: litert-torch missing, a quantization format LiteRT int8 cannot hold, or
            a failed conversion (with the converter's message).
    """
    if variant not in ("fp32", "int8", "dynamic"):
        raise QuantbenchError(f"{FMT}: no LiteRT model for variant {variant!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{model.name}_{variant}_b{batch}.tflite"
    key = _content_key(model, variant, batch)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        path.write_bytes(_CACHE[key])
        return path
    litert_torch = import_litert_torch()
    x = torch.randn(batch, *model.input_shape, generator=torch.Generator().manual_seed(0))
    was_training = model.float_model.training
    try:
        with _quiet():
            quant_config = None
            if variant == "fp32":
                net = model.float_model.eval()
            elif variant == "int8":
                net = export_net(model.quantized, _ActQ, _LayerQ)
                _quantize_before_same_scale_ops(net)
                quant_config = _static_config()
            else:
                net, quant_config = _pt2e_dynamic(model.float_model.eval(), x)
            edge = litert_torch.convert(net, (x,), quant_config=quant_config)
            edge.export(str(path))
    except QuantbenchError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise QuantbenchError(f"{FMT} of {model.name} ({variant}) failed: {type(exc).__name__}: {first}") from exc
    finally:
        model.float_model.train(was_training)
    _CACHE[key] = path.read_bytes()
    while len(_CACHE) > _CACHE_ENTRIES:
        _CACHE.popitem(last=False)
    return path
