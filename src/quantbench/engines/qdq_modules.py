"""Stand-ins for a prepared model's quantizers and quantized layers that emit QDQ ONNX operators.

One job: turn each calibrated :class:`~quantbench.quant.fake.FakeQuant` and each
QConv2d/QLinear into a module whose buffers hold OUR scales, zero points and integer codes
(int8/uint8 weights, int32 bias on the ``s_in * s_w`` grid) and whose ``torch.onnx`` symbolic
emits ``[Clip ->] QuantizeLinear -> DequantizeLinear`` / ``DequantizeLinear -> Conv/Gemm`` at the
same place. Why the file looks the way it does: :mod:`quantbench.engines.export_qdq`. The
LiteRT exporter reuses :func:`export_net`, :func:`weight_codes` and :func:`check_exportable`.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.fake import FakeQuant, deployed_codes
from quantbench.quant.prepare import QConv2d, QLinear, QuantizedModel
from quantbench.quant.spec import QuantSpec, deployed_code_range

__all__ = ["check_exportable", "export_net", "weight_codes"]

_INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------- ONNX-emitting ops


class _ActQDQ(torch.autograd.Function):
    """Activation fake quantization in eager mode; ``[Clip ->] QuantizeLinear -> DequantizeLinear`` in ONNX."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, clip_lo, clip_hi):  # type: ignore[override]
        z = zero_point.to(torch.int32)
        q = torch.clamp(torch.round(x / scale) + z, qmin, qmax)
        return (q - z) * scale

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin, qmax, clip_lo, clip_hi):  # type: ignore[no-untyped-def]
        if clip_lo is not None:
            lo = g.op("Constant", value_t=torch.tensor(clip_lo, dtype=torch.float32))
            hi = g.op("Constant", value_t=torch.tensor(clip_hi, dtype=torch.float32))
            x = g.op("Clip", x, lo, hi)
        q = g.op("QuantizeLinear", x, scale, zero_point)
        return g.op("DequantizeLinear", q, scale, zero_point)


def _dq(g, codes, scale, zero_point, axis):  # type: ignore[no-untyped-def]
    if axis is None:
        return g.op("DequantizeLinear", codes, scale, zero_point)
    return g.op("DequantizeLinear", codes, scale, zero_point, axis_i=axis)


def _deq(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None
) -> torch.Tensor:
    shape = [1] * codes.dim()
    if axis is not None:
        shape[axis] = -1
    s = scale.reshape(shape) if scale.dim() else scale
    z = zero_point.reshape(shape) if zero_point.dim() else zero_point
    return (codes.to(torch.int32) - z.to(torch.int32)).to(torch.float32) * s


class _QConv(torch.autograd.Function):
    """Conv with DequantizeLinear'd int8 weight (and int32 or float bias)."""

    @staticmethod
    def forward(ctx, x, wq, ws, wz, bq, bs, bz, bf, w_axis, stride, pads, dilation, groups, kernel):  # type: ignore[override]
        w = _deq(wq, ws, wz, w_axis)
        b = _deq(bq, bs, bz, 0) if bq is not None else bf
        return F.conv2d(x, w, b, stride, (pads[0], pads[1]), dilation, groups)

    @staticmethod
    def symbolic(g, x, wq, ws, wz, bq, bs, bz, bf, w_axis, stride, pads, dilation, groups, kernel):  # type: ignore[no-untyped-def]
        inputs = [x, _dq(g, wq, ws, wz, w_axis)]
        if bq is not None:
            inputs.append(_dq(g, bq, bs, bz, 0))
        elif bf is not None:
            inputs.append(bf)
        return g.op(
            "Conv", *inputs, kernel_shape_i=list(kernel), strides_i=list(stride),
            pads_i=[pads[0], pads[1], pads[0], pads[1]], dilations_i=list(dilation), group_i=groups,
        )  # fmt: skip


class _QGemm(torch.autograd.Function):
    """Linear as ``Gemm(x, DQ(w), DQ(b), transB=1)`` (what ONNX Runtime fuses into QGemm)."""

    @staticmethod
    def forward(ctx, x, wq, ws, wz, bq, bs, bz, bf, w_axis):  # type: ignore[override]
        w = _deq(wq, ws, wz, w_axis)
        b = _deq(bq, bs, bz, 0) if bq is not None else bf
        return F.linear(x, w, b)

    @staticmethod
    def symbolic(g, x, wq, ws, wz, bq, bs, bz, bf, w_axis):  # type: ignore[no-untyped-def]
        inputs = [x, _dq(g, wq, ws, wz, w_axis)]
        if bq is not None:
            inputs.append(_dq(g, bq, bs, bz, 0))
        elif bf is not None:
            inputs.append(bf)
        return g.op("Gemm", *inputs, alpha_f=1.0, beta_f=1.0, transB_i=1)


# --------------------------------------------------------------------------- export modules


def check_exportable(spec: QuantSpec, what: str, fmt: str = "QDQ export") -> None:
    """Refuse what integer QDQ formats (ONNX QDQ, LiteRT int8) cannot express; ``fmt`` prefixes the message."""
    if spec.companding != "none":
        raise QuantbenchError(
            f"{fmt}: {what} uses {spec.companding} companding ({spec.short()}); QuantizeLinear/"
            "DequantizeLinear levels are uniform, so companded tensors cannot be deployed as integer QDQ models"
        )
    if spec.dynamic:
        raise QuantbenchError(
            f"{fmt}: {what} is a dynamic quantizer ({spec.short()}); static QDQ needs calibrated "
            "scales - deploy with the 'dynamic' engine variant instead"
        )
    if spec.bits > 8:
        raise QuantbenchError(
            f"{fmt}: {what} has {spec.bits} bits ({spec.short()}); at most 8 are supported"
        )


class _ActExport(nn.Module):
    """Stands in for an activation FakeQuant; buffers become initializers ``<name>.scale``/``.zero_point``."""

    def __init__(self, fq: FakeQuant, name: str) -> None:
        super().__init__()
        spec = fq.spec
        check_exportable(spec, f"activation quantizer {name}")
        if spec.per_channel:
            raise QuantbenchError(
                f"QDQ export: activation quantizer {name} is per-channel; only per-tensor is supported"
            )
        if not fq.calibrated:
            raise QuantbenchError(
                f"QDQ export: activation quantizer {name} is not calibrated; run calibrate() first"
            )
        scale, zp = fq.qparams()
        if scale.dim() != 0:
            raise QuantbenchError(
                f"QDQ export: activation quantizer {name} has {scale.numel()} scales; expected one"
            )
        dtype = torch.int8 if spec.signed else torch.uint8
        self.register_buffer("scale", scale.to(torch.float32).clone())
        self.register_buffer("zero_point", zp.to(dtype).clone())
        self.qmin, self.qmax = spec.qmin, spec.qmax
        full = (-128, 127) if spec.signed else (0, 255)
        self.clip: tuple[float, float] | None = None
        if (spec.qmin, spec.qmax) != full:  # fewer bits (or narrow range): restrict the 8-bit container
            s, z = float(scale), int(zp)
            self.clip = (float(np.float32((spec.qmin - z) * s)), float(np.float32((spec.qmax - z) * s)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.clip if self.clip is not None else (None, None)
        return _ActQDQ.apply(x, self.scale, self.zero_point, self.qmin, self.qmax, lo, hi)


def weight_codes(layer: nn.Module, name: str, fmt: str = "QDQ export") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None]:
    """Our integer weight codes of a QConv2d/QLinear, with scale, zero point and channel axis (None: per-tensor)."""
    fq = layer.weight_fq
    if not isinstance(fq, FakeQuant):
        raise QuantbenchError(f"{fmt}: layer {name} has a weight quantizer of type {type(fq).__name__}")
    spec = fq.spec
    check_exportable(spec, f"the weight of {name}", fmt)
    if not fq.calibrated:
        raise QuantbenchError(f"{fmt}: the weight quantizer of {name} is not calibrated")
    scale, zp = fq.qparams()
    w = layer.weight.detach().to(torch.float32)
    # Our codes, exactly as the simulation rounds them; an asymmetric low-bit grid re-centred to
    # int8 with zero point 0 (the same values), which every integer kernel takes.
    codes, zp = deployed_codes(w, scale, zp, spec)
    dtype = torch.int8 if spec.signed or deployed_code_range(spec)[0] < 0 else torch.uint8
    axis = (spec.axis % w.dim()) if scale.dim() == 1 else None
    return codes.to(dtype), scale.to(torch.float32).clone(), zp.to(dtype).clone(), axis


class _LayerExport(nn.Module):
    """Stands in for a QConv2d/QLinear: int8 codes + DequantizeLinear, int32 (or float) bias."""

    def __init__(self, layer: nn.Module, name: str, in_scale: torch.Tensor | None, weight_type: str = "int8") -> None:
        super().__init__()
        wq, ws, wz, axis = weight_codes(layer, name)
        self.name = name
        self.w_axis = axis
        self.is_conv = isinstance(layer, nn.Conv2d)
        if self.is_conv:
            if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise QuantbenchError(
                    f"QDQ export: conv {name} uses padding {layer.padding!r}/{layer.padding_mode!r}; "
                    "only explicit zero padding is supported"
                )
            self.stride, self.pads = tuple(layer.stride), tuple(layer.padding)
            self.dilation, self.groups = tuple(layer.dilation), int(layer.groups)
            self.kernel = tuple(layer.kernel_size)
        self.int32_bias = False
        self.float_bias_reason: str | None = None
        bias = layer.bias.detach().to(torch.float32) if layer.bias is not None else None
        if bias is not None and in_scale is not None and axis in (None, 0):
            # The int32 grid s_in * s_w. An all-zero weight channel whose scale is tiny would
            # overflow int32; its codes are all 0, so any scale is exact there: enlarge it.
            ws = ws.clone()
            need = bias.abs() / (in_scale * ws)
            over = need > _INT32_MAX // 2
            fits = True
            if over.any():
                zero_rows = (wq.reshape(wq.shape[0], -1) == 0).all(dim=1) if axis == 0 else wq.eq(0).all()
                fits = bool((~over | zero_rows).all())
                if fits:
                    fix = bias.abs() / (in_scale * (_INT32_MAX // 4))
                    ws = torch.where(over, torch.maximum(ws, fix), ws) if axis == 0 else torch.maximum(ws, fix.max())
            if fits:
                bscale = (in_scale * ws).to(torch.float32)
                bscale = bscale if bscale.dim() == 1 else bscale.expand(bias.shape[0]).clone()
                self.register_buffer("bias_q", torch.round(bias / bscale).to(torch.int32))
                self.register_buffer("bias_scale", bscale)
                self.register_buffer("bias_zero_point", torch.zeros(bias.shape[0], dtype=torch.int32))
                self.int32_bias = True
                self.bias_f = None
            else:
                # |bias| / (s_in * s_w) beyond int32: the input scale is tiny (e.g. a randomly
                # initialised deep net whose activations vanished). Keep the exact float bias;
                # engines then run this one layer in float between Q/DQ (recorded in metadata).
                self.float_bias_reason = (f"{name}: |bias|/(s_in*s_w) up to {float(need.max()):.3g} exceeds int32 "
                                          f"(input scale {float(in_scale):.3g})")
                self.register_buffer("bias_f", bias.clone())
        elif bias is not None:
            self.register_buffer("bias_f", bias.clone())
        else:
            self.bias_f = None
        if not self.int32_bias:
            self.bias_q = self.bias_scale = self.bias_zero_point = None
        if weight_type == "uint8" and wq.dtype == torch.int8:  # the same values: code + 128, zero point 128
            wq = (wq.to(torch.int16) + 128).to(torch.uint8)
            wz = (wz.to(torch.int16) + 128).to(torch.uint8)
        self.register_buffer("weight_q", wq)
        self.register_buffer("weight_scale", ws)
        self.register_buffer("weight_zero_point", wz)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (x, self.weight_q, self.weight_scale, self.weight_zero_point,
                self.bias_q, self.bias_scale, self.bias_zero_point, self.bias_f, self.w_axis)  # fmt: skip
        if self.is_conv:
            return _QConv.apply(*args, self.stride, self.pads, self.dilation, self.groups, self.kernel)
        if x.dim() != 2:
            raise QuantbenchError(
                f"QDQ export: linear {self.name} gets a {x.dim()}-D input; only 2-D is supported"
            )
        return _QGemm.apply(*args)


def _replace(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, leaf = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


def export_net(qm: QuantizedModel, act_cls: type[nn.Module] = _ActExport,
               layer_cls: type[nn.Module] = _LayerExport) -> nn.Module:
    """A copy of ``qm.net`` whose quantizers and quantized layers are replaced by export modules.

    ``act_cls(fake_quant, name)`` stands in for each activation quantizer and
    ``layer_cls(layer, name, input_scale)`` for each quantized conv/linear. The defaults emit
    ONNX QDQ operators; the LiteRT exporter passes modules that emit PyTorch's
    ``quantized_decomposed`` ops instead (same places, same scales).
    """
    net = copy.deepcopy(qm.net).eval()
    for name, fq in qm.act_quantizers():
        _replace(net, name, act_cls(fq, name))
    act_scale = {name: fq.qparams()[0] for name, fq in qm.act_quantizers()}
    for info in qm.layers:
        layer = net.get_submodule(info.name)
        if not isinstance(layer, (QConv2d, QLinear)):
            continue  # an FP32 layer (first/last policy or an override): stays float
        s_in = act_scale.get(info.input_quantizer) if info.input_quantizer else None
        _replace(net, info.name, layer_cls(layer, info.name, s_in))
    left = [n for n, m in net.named_modules() if isinstance(m, FakeQuant)]
    if left:
        raise QuantbenchError(f"QDQ export: quantizers outside the supported places: {', '.join(left)}")
    return net
