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

import functools
import json
import warnings
from pathlib import Path

import torch

from quantbench.engines.onnx_export import _QUIET, INPUT_NAME, OUTPUT_NAME
from quantbench.engines.qdq_modules import _LayerExport, check_exportable, export_net, weight_codes
from quantbench.engines.qdq_rewrites import (
    _constants_to_initializers,
    _hoist_qdq_over_commuting_ops,
    _identities_to_initializers,
    _merge_duplicate_qdq,
    _slice_before_add,
)
from quantbench.errors import QuantbenchError
from quantbench.quant.prepare import QuantizedModel
from quantbench.quant.spec import deployed_code_range

__all__ = ["FORMAT", "METADATA_PREFIX", "check_exportable", "export_net", "export_qdq_onnx", "ort_weight_type", "qdq_metadata", "weight_codes"]

FORMAT = "quantbench-qdq-v1"
METADATA_PREFIX = "quantbench."
_EXPORT_BATCH = 2


def ort_weight_type(qm: QuantizedModel | None = None, flags: set[str] | None = None) -> str:
    """``"uint8"`` where ONNX Runtime's u8 x s8 integer kernels can saturate on this CPU, else ``"int8"``.

    Why: without VNNI (``avx512_vnni``, ``avx_vnni``) or AMX, ONNX Runtime's x86 u8 x s8 GEMM uses
    ``vpmaddubsw``, which adds two u8 x s8 products in int16 and saturates. Measured on an AVX2-only
    AMD EPYC with ONNX Runtime 1.32: logits 0.16 off (of 0.48) on a 3-layer test network, while the
    same values as u8 weights (zero point 128) were exact. Elsewhere (VNNI, AMX, Arm) s8 weights are
    exact and the fastest format - and so they are for ``qm`` when every weight code lies in
    -64..63 (``--weight-range reduced``): ``2 x 255 x 64`` fits in int16. ``flags`` default to the
    CPU the kernels really run on (never a ``QUANTBENCH_CPUINFO`` stand-in).
    """
    from quantbench.engines.base import int8_saturates, real_cpu_flags

    if not int8_saturates(real_cpu_flags() if flags is None else flags)[0]:
        return "int8"
    if qm is not None and all(-64 <= deployed_code_range(fq.spec)[0] and deployed_code_range(fq.spec)[1] <= 63
                              for _, fq in qm.weight_quantizers()):
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
        + "per output channel (axis 0) when per_channel"
        + ("; asymmetric low-bit weights stored re-centred (code - zero point, the same values)"
           if any(deployed_code_range(w) != (w.qmin, w.qmax) for w in weights) else ""),
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
