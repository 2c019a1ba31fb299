"""Export a model quantized by quantbench as a QDQ ONNX file that carries OUR scales.

"What we simulate is what we deploy": every :class:`~quantbench.quant.fake.FakeQuant` of the
prepared graph becomes, at the same place, the ONNX operators an integer engine fuses:

* activation quantizers -> ``QuantizeLinear -> DequantizeLinear`` with our scale and zero point
  (uint8 for unsigned specs, the format ONNX Runtime is fast with; int8 for signed ones);
* conv/linear weights -> an **INT8 initializer** (our integer codes, per output channel along
  axis 0, symmetric: zero point 0) followed by ``DequantizeLinear`` - never float weights with
  a Q node, so the file holds the codes our simulation used, bit for bit;
* biases -> an INT32 initializer with ``scale = s_in * s_w`` (zero point 0) followed by
  ``DequantizeLinear`` when the layer's input is quantized: ONNX Runtime's QDQ selector fuses
  ``DQ -> Conv/Gemm -> Q`` into ``QLinearConv``/``QGemm`` only when *every* input, the bias
  included, comes from a DequantizeLinear of the right type (int32 for the bias; see
  ``ConvNodeGroupSelector::Check`` in onnxruntime's ``qdq_selectors.cc``). Rounding the bias to
  that grid moves each output by at most ``s_in * s_w / 2`` (what every integer kernel does);
  the simulation keeps the float bias. The error is one term against the K rounding errors of
  the layer's inputs: negligible at 8 bits (below the float-rounding noise of the engines), small
  with few bits (w4a4: a few % of the logits on a tiny net). A float bias would not avoid it:
  ONNX Runtime's own bias-quantization pass rounds a float bias of a DQ-fed Conv to the same
  int32 grid. Biases of layers whose input is not quantized stay float32, and so does a bias
  that does not fit int32 at ``s_in * s_w`` (only seen with vanishing activations of randomly
  initialised deep nets; that layer then runs in float, listed in ``float_bias_layers``).

Rounding follows ONNX ``QuantizeLinear`` (``round half to even of x / scale``), as
:mod:`quantbench.quant.fake` does, so the exported graph computes what the simulated model
computes. Two identical quantizers of one tensor (same scale and zero point; e.g. a block
output feeding both the next conv and, through an identity shortcut, the residual add) are
merged into one Q/DQ pair, which is numerically the same and lets the engine fuse the op
that produces the tensor; merges are listed in the metadata. Two more exact rewrites keep the
graph fusable: a Q/DQ pair that follows a Flatten/Reshape or a MaxPool is repeated in front of it
(so global average pooling, and the conv+ReLU before a max-pool, run on integers), and a strided shortcut's slices of a residual block output
are moved in front of a float copy of the block's add (``slice(relu(a + b)) =
relu(slice(a) + slice(b))``), so the add itself has a single quantized consumer and fuses.

Formats that cannot be expressed are refused with the reason: companded (mu-law) weights
(QDQ levels are uniform), dynamic activation quantizers (use the ``dynamic`` engine variant,
ONNX Runtime's own dynamic quantization), per-channel activations, and more than 8 bits.
Fewer than 8 bits are exported in 8-bit containers restricted to their range: weights hold
codes of their own range, activations pass a ``Clip`` to the range before the 8-bit Q. The
accuracy is the simulated one but there is NO speed gain (engines run 8-bit kernels; a
``Clip`` before a Q blocks ONNX Runtime's fusion of the op in front of it, which then runs in
float between Q/DQ: slower than w8a8) - the metadata says so.

Example:
    >>> qm = quantize_ptq(model, PTQConfig("w8a8", "mse"), calib)  # doctest: +SKIP
    >>> export_qdq_onnx(qm, "model_int8.onnx", (3, 32, 32))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import functools
import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quantbench.engines.onnx_export import _QUIET, INPUT_NAME, OUTPUT_NAME
from quantbench.errors import QuantbenchError
from quantbench.quant.fake import FakeQuant, quantize
from quantbench.quant.prepare import QConv2d, QLinear, QuantizedModel
from quantbench.quant.spec import QuantSpec

__all__ = ["FORMAT", "METADATA_PREFIX", "check_exportable", "export_net", "export_qdq_onnx", "ort_weight_type", "qdq_metadata", "weight_codes"]

FORMAT = "quantbench-qdq-v1"
METADATA_PREFIX = "quantbench."
_INT32_MAX = 2**31 - 1
_EXPORT_BATCH = 2


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
    codes = quantize(w, scale, zp, spec)  # our codes, exactly as the simulation rounds them
    dtype = torch.int8 if spec.signed else torch.uint8
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


# --------------------------------------------------------------------------- ONNX post-processing


def _constants_to_initializers(model: Any) -> None:
    """Constant nodes (our Clip bounds) become named initializers, where engines look for them."""
    graph = model.graph
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = copy.deepcopy(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _identities_to_initializers(model: Any) -> None:
    """The exporter shares equal-valued initializers through Identity nodes; give each its own copy.

    Engines look for constant initializers in front of DequantizeLinear, and so does the reader.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            tensor = copy.deepcopy(inits[node.input[0]])
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            inits[tensor.name] = tensor
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _init_values(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _merge_duplicate_qdq(model: Any, names: dict[str, str]) -> list[list[str]]:
    """Merge Q->DQ pairs that quantize the same tensor with equal parameters; returns the groups."""
    graph = model.graph
    values = _init_values(model)
    users: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for inp in node.input:
            users[inp].append(node)

    def key(q: Any) -> tuple | None:
        if len(q.input) < 3 or q.input[1] not in values or q.input[2] not in values:
            return None
        s, z = values[q.input[1]], values[q.input[2]]
        return (s.tobytes(), s.shape, z.tobytes(), str(z.dtype), tuple((a.name, a.i) for a in q.attribute))

    rename: dict[str, str] = {}
    dropped: set[int] = set()
    merged: list[list[str]] = []
    for tensor, consumers in list(users.items()):
        groups: dict[tuple, list[tuple[Any, Any]]] = defaultdict(list)
        for q in consumers:
            if q.op_type != "QuantizeLinear" or q.input[0] != tensor:
                continue
            q_users = users.get(q.output[0], [])
            if len(q_users) != 1 or q_users[0].op_type != "DequantizeLinear":
                continue
            k = key(q)
            if k is not None:
                groups[k].append((q, q_users[0]))
        for pairs in groups.values():
            if len(pairs) < 2:
                continue
            (_, dq0), rest = pairs[0], pairs[1:]
            for q, dq in rest:
                rename[dq.output[0]] = dq0.output[0]
                dropped.update({id(q), id(dq)})
            merged.append([names.get(q.input[1], q.input[1]) for q, _ in pairs])
    if not rename:
        return merged
    nodes = [n for n in graph.node if id(n) not in dropped]
    for node in nodes:
        for i, inp in enumerate(node.input):
            if inp in rename:
                node.input[i] = rename[inp]
    for out in graph.output:
        if out.name in rename:  # never the case for our graphs (logits are not quantized)
            raise QuantbenchError("QDQ export: internal error, a merged quantizer feeds the graph output")
    del graph.node[:]
    graph.node.extend(
        _topological(nodes, {i.name for i in graph.input} | {t.name for t in graph.initializer})
    )
    used = {i for n in graph.node for i in n.input}
    live = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    return merged


_SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")
_COMMUTING_OPS = (*_SHAPE_OPS, "MaxPool")


def _hoist_qdq_over_commuting_ops(model: Any) -> int:
    """``op -> Flatten -> Q -> DQ`` becomes ``op -> Q -> DQ -> Flatten -> Q -> DQ`` (same parameters).

    Exact: per-tensor quantization commutes with reshaping and with max-pooling (Q is
    monotone, so ``max(Q(x)) = Q(max(x))``; padding is -inf), and ``Q(DQ(Q(x))) = Q(x)``. It
    lets engines run the op in front on integers, as they do when a quantizer sits on that
    op's output: global average pooling before the classifier's Flatten, and the ResNet stem
    conv+ReLU before its max-pool (measured on ResNet-18, 224x224, OpenVINO: without it the stem
    conv's output and the max-pool ran in f32, about 10% slower than NNCF's INT8 model; the
    pool then runs on u8 between identical Q/DQ pairs). Returns the count.
    """
    from onnx import helper

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    users: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for inp in node.input:
            users[inp].append(node)
    inserts: list[tuple[Any, list[Any]]] = []
    for node in graph.node:
        if node.op_type not in _COMMUTING_OPS:
            continue
        outs = users.get(node.output[0], [])
        src = producers.get(node.input[0])
        if len(outs) != 1 or outs[0].op_type != "QuantizeLinear" or src is None:
            continue
        if src.op_type in ("DequantizeLinear", *_COMMUTING_OPS) or len(users[node.input[0]]) != 1:
            continue
        q = outs[0]
        if len(q.input) < 3 or any(a.name == "axis" for a in q.attribute):
            continue
        base = node.input[0]
        q_out, dq_out = f"{base}_hoisted_q", f"{base}_hoisted_dq"
        new_q = helper.make_node(
            "QuantizeLinear", [base, q.input[1], q.input[2]], [q_out], name=f"{node.name}_q"
        )
        new_dq = helper.make_node(
            "DequantizeLinear", [q_out, q.input[1], q.input[2]], [dq_out], name=f"{node.name}_dq"
        )
        node.input[0] = dq_out
        inserts.append((node, [new_q, new_dq]))
    if inserts:
        nodes: list[Any] = []
        before = {id(n): extra for n, extra in inserts}
        for node in graph.node:
            nodes.extend(before.get(id(node), []))
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
    return len(inserts)


def _shapes(model: Any) -> dict[str, tuple]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = tuple(d.dim_param or d.dim_value for d in dims)
    return out


def _slice_before_add(model: Any) -> int:
    """``Add -> [Relu] -> {Q, Slice...}`` becomes ``Add -> [Relu] -> Q`` plus a sliced copy of the Add.

    A strided shortcut (ResNet option A) slices the block output, which is also quantized for
    the next convolution. Engines fuse ``DQ, DQ -> Add -> Relu -> Q`` into an integer add only
    when Q is the single consumer, so the slice chain is moved in front of a copy of the Add
    (and Relu): ``slice(relu(a + b)) = relu(slice(a) + slice(b))`` exactly, for inputs of one
    shape. The copy runs in float on the (smaller) sliced tensors. Returns the count.
    """
    from onnx import helper

    graph = model.graph
    users: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for inp in node.input:
            users[inp].append(node)
    producers = {o: n for n in graph.node for o in n.output}
    shapes: dict[str, tuple] | None = None
    plans = []
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        if any(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in add.input):
            continue
        head, relu = add, None
        after = users.get(add.output[0], [])
        if len(after) == 1 and after[0].op_type == "Relu":
            relu = after[0]
            head = relu
        consumers = users.get(head.output[0], [])
        slices = [n for n in consumers if n.op_type == "Slice"]
        if not slices or not any(n.op_type == "QuantizeLinear" for n in consumers):
            continue
        if any(n.op_type not in ("Slice", "QuantizeLinear") for n in consumers):
            continue
        if shapes is None:
            shapes = _shapes(model)
        a, b = (shapes.get(i) for i in add.input)
        if a is None or a != b or not a:
            continue
        plans.append((add, relu, slices))
    if not plans:
        return 0
    new_nodes: dict[int, list[Any]] = defaultdict(list)  # inserted before the first slice
    drop: set[int] = set()
    for k, (add, relu, slices) in enumerate(plans):
        for j, first in enumerate(slices):
            chain = [first]
            while True:
                nxt = users.get(chain[-1].output[0], [])
                if len(nxt) == 1 and nxt[0].op_type == "Slice" and nxt[0].input[0] == chain[-1].output[0]:
                    chain.append(nxt[0])
                else:
                    break
            made: list[Any] = []
            sliced = []
            for side, src in enumerate(add.input):
                x = src
                for m, sl in enumerate(chain):
                    out = f"{sl.output[0]}_pre_add{side}"
                    made.append(
                        helper.make_node(
                            "Slice", [x, *sl.input[1:]], [out], name=f"{sl.name}_pre{side}_{k}_{j}_{m}"
                        )
                    )
                    x = out
                sliced.append(x)
            final = chain[-1].output[0]
            add_out = final if relu is None else f"{final}_pre_relu"
            made.append(helper.make_node("Add", sliced, [add_out], name=f"{add.name}_sliced_{k}_{j}"))
            if relu is not None:
                made.append(helper.make_node("Relu", [add_out], [final], name=f"{relu.name}_sliced_{k}_{j}"))
            new_nodes[id(chain[-1])].extend(made)
            drop.update(id(n) for n in chain)
    nodes: list[Any] = []
    for node in graph.node:
        if id(node) in new_nodes:
            nodes.extend(new_nodes[id(node)])
        if id(node) not in drop:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(plans)


def _topological(nodes: list[Any], available: set[str]) -> list[Any]:
    done = set(available) | {""}
    order: list[Any] = []
    pending = list(nodes)
    while pending:
        rest = []
        for node in pending:
            if all(i in done for i in node.input):
                order.append(node)
                done.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise QuantbenchError("QDQ export: internal error, the graph has a cycle or a missing input")
        pending = rest
    return order


def ort_weight_type() -> str:
    """``"uint8"`` where ONNX Runtime's u8 x s8 integer kernels can saturate on this CPU, else ``"int8"``.

    Why: without VNNI (``avx512_vnni``, ``avx_vnni``) or AMX, ONNX Runtime's x86 u8 x s8 GEMM uses
    ``vpmaddubsw``, which adds two u8 x s8 products in int16 and saturates. Measured on an AVX2-only
    AMD EPYC with ONNX Runtime 1.32: logits 0.16 off (of 0.48) on a 3-layer test network, while the
    same values as u8 weights (zero point 128) were exact. Elsewhere (VNNI, AMX, Arm) s8 weights are
    exact and the fastest format.
    """
    import platform

    from quantbench.engines.base import cpu_flags

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return "int8"
    flags = cpu_flags()
    if not flags or flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return "int8"
    return "uint8"


def qdq_metadata(path: str | Path) -> dict[str, str]:
    """The ``quantbench.*`` metadata of an exported QDQ file (format choices, plan, merges).

    Example:
        >>> qdq_metadata("model_int8.onnx")["quantbench.activations"]  # doctest: +SKIP
        'uint8 asymmetric per-tensor ...'
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


def export_qdq_onnx(
    qm: QuantizedModel,
    path: str | Path,
    input_shape: tuple[int, int, int],
    *,
    opset: int = 17,
    weight_type: str = "int8",
) -> Path:
    """Write ``qm`` (prepared and calibrated) as a QDQ ONNX file with our scales and codes.

    Args:
        qm: The quantized model (its FakeQuant scales and zero points are used as they are).
        path: Output ``.onnx`` file (parent folders are created).
        input_shape: ``(C, H, W)`` of one input; the batch axis is dynamic.
        opset: ONNX opset, >= 13 (per-axis DequantizeLinear).
        weight_type: ``"int8"`` (our codes, zero point 0) or ``"uint8"`` (the same values stored as
            code + 128 with zero point 128). ONNX Runtime's u8 x s8 kernels on x86 CPUs without
            VNNI sum pairs of products in int16 and saturate (wrong logits); its u8 x u8 kernels do
            not - see :func:`ort_weight_type`.

    Returns:
        The path written (checked with ``onnx.checker``).

    Raises:
        QuantbenchError: onnx missing, a format that QDQ cannot express (companded or dynamic
            quantizers, > 8 bits, per-channel activations), an uncalibrated quantizer, or a
            failed export.

    Example:
        >>> p = export_qdq_onnx(qm, "r20_int8.onnx", (3, 32, 32))  # doctest: +SKIP
        >>> onnxruntime.InferenceSession(str(p)).run(None, {"input": x})  # doctest: +SKIP
    """
    try:
        import onnx
        from onnx import helper
    except ImportError as exc:
        raise QuantbenchError("QDQ export needs the onnx package: pip install 'quantbench[onnx]'") from exc
    if not isinstance(qm, QuantizedModel):
        raise QuantbenchError(
            f"QDQ export needs a QuantizedModel (from prepare/quantize_ptq), got {type(qm).__name__}"
        )
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise QuantbenchError(f"input_shape must be (C, H, W) positive integers, got {input_shape!r}")
    if opset < 13:
        raise QuantbenchError(f"QDQ export needs opset >= 13 (per-channel DequantizeLinear), got {opset}")
    if weight_type not in ("int8", "uint8"):
        raise QuantbenchError(f"QDQ export: weight_type must be 'int8' or 'uint8', got {weight_type!r}")
    net = export_net(qm, layer_cls=functools.partial(_LayerExport, weight_type=weight_type))
    float_bias = [m.float_bias_reason for m in net.modules()
                  if isinstance(m, _LayerExport) and m.float_bias_reason is not None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.randn(_EXPORT_BATCH, *shape)
    try:
        with warnings.catch_warnings():
            for category, message in _QUIET:
                warnings.filterwarnings("ignore", message=message, category=category)
            torch.onnx.export(
                net, (x,), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )  # fmt: skip
    except QuantbenchError:
        raise
    except Exception as exc:
        raise QuantbenchError(
            f"QDQ export of {type(qm.net).__name__} failed: {type(exc).__name__}: {exc}"
        ) from exc

    model = onnx.load(str(path))
    _constants_to_initializers(model)
    _identities_to_initializers(model)
    # Readable names of our quantizers' scale initializers (for the merge report).
    names = {f"{n}.scale": n for n, _ in qm.act_quantizers()}
    merged = _merge_duplicate_qdq(model, names)
    _hoist_qdq_over_commuting_ops(model)
    _slice_before_add(model)
    weights = [fq.spec for _, fq in qm.weight_quantizers()]
    acts = [fq.spec for _, fq in qm.act_quantizers()]
    low_bit = sorted({s.bits for s in weights + acts if s.bits < 8})
    meta = {
        "format": FORMAT,
        "activations": "uint8 asymmetric per-tensor QuantizeLinear->DequantizeLinear (int8 for signed specs), "
        "our calibrated scales and zero points",
        "weights": ("int8 initializers of our integer codes -> DequantizeLinear, symmetric (zero point 0), "
                    if weight_type == "int8" else
                    "uint8 initializers of our integer codes + 128 -> DequantizeLinear with zero point 128 (the "
                    "same values; u8 x u8 kernels, which do not saturate on x86 CPUs without VNNI), ")
        + "per output channel (axis 0) when per_channel",
        "bias": "int32 with scale s_in*s_w and zero point 0 where the layer input is quantized (as ONNX "
        "Runtime's QLinearConv/QGemm fusion requires; the simulation keeps it float: error <= s_in*s_w/2), "
        "float32 elsewhere",
        "low_bit": (
            f"{','.join(map(str, low_bit))}-bit tensors stored in 8-bit containers restricted to their range "
            "(activations via Clip): simulated accuracy, no speed gain (a Clip before a Q blocks ONNX "
            "Runtime's fusion of the op in front: slower than w8a8)"
            if low_bit
            else "none"
        ),
        "plan": json.dumps(qm.plan.as_dict(), sort_keys=True),
        "merged_quantizers": json.dumps(merged),
        "float_bias_layers": json.dumps(float_bias),
    }
    helper.set_model_props(model, {METADATA_PREFIX + k: v for k, v in meta.items()})
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise QuantbenchError(f"exported QDQ ONNX file {path} is invalid: {exc}") from exc
    onnx.save(model, str(path))
    return path
