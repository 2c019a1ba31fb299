"""Save a quantized model with its integer weights really packed; load it back exactly.

The file is a :mod:`quantbench.quant.artifact` container: quantized weights as bit-packed
integer codes (INT8 one per byte, INT4 two per byte, any width densely), every other tensor
(biases, scales, zero-points, unquantized layers) raw. The header records the zoo model,
its constructor arguments and the :class:`QuantPlan`, so :func:`load_quantized` rebuilds the
same prepared graph and the reloaded model computes bit-identical outputs. Its size on disk
is the size quantbench reports.

Example:
    >>> nbytes = save_quantized(qm, "m.qbm", model_name="resnet20")  # doctest: +SKIP
    >>> qm2 = load_quantized("m.qbm")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.artifact import PackedTensor, load_artifact, read_header, save_artifact
from quantbench.quant.fake import dequantize, quantize
from quantbench.quant.prepare import QuantizedModel, prepare
from quantbench.quant.spec import QuantPlan

FORMAT = "quantbench-quantized-model"
FORMAT_VERSION = 1


def _weight_keys(qm: QuantizedModel) -> dict[str, Any]:
    """state_dict key of each quantized weight -> (layer module, spec)."""
    out = {}
    for name, fq in qm.weight_quantizers():
        out[f"net.{name}.weight"] = (qm.layer(name), fq)
    return out


def save_quantized(
    qm: QuantizedModel,
    path: str | Path,
    *,
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    extra: dict[str, Any] | None = None,
) -> int:
    """Write ``qm`` to ``path``; returns the file's size in bytes.

    Args:
        qm: A prepared and calibrated model.
        path: Output file (written atomically).
        model_name: Zoo name to rebuild the architecture on load (None: the loader needs a template).
        model_kwargs: ``build_model`` arguments (num_classes, in_channels, hyper-parameters).
        input_shape: (C, H, W) the model expects, recorded for engines and bundles.
        extra: Free JSON metadata (calibration set, algorithm, ...).
    """
    weights = _weight_keys(qm)
    tensors: dict[str, PackedTensor | torch.Tensor] = {}
    for key, value in qm.state_dict().items():
        if key in weights:
            layer, fq = weights[key]
            scale, zp = fq.qparams()
            codes = quantize(layer.weight.detach(), scale, zp, fq.spec)
            tensors[key] = PackedTensor(codes, bits=fq.spec.bits, signed=fq.spec.signed)
        else:
            tensors[key] = value.detach().cpu().contiguous()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": model_name, "kwargs": model_kwargs or {}, "input_shape": list(input_shape or [])},
        "plan": qm.plan.as_dict(),
        "layers": [
            {"name": i.name, "kind": i.kind, "spec": i.spec.short(), "input_quantizer": i.input_quantizer}
            for i in qm.layers
        ],
        "extra": extra or {},
    }
    return save_artifact(path, meta, tensors)


def read_quantized_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a saved quantized model, without reading its tensors."""
    meta = read_header(path).get("meta", {})
    if meta.get("format") != FORMAT:
        raise QuantbenchError(f"{path}: not a quantbench quantized model (format {meta.get('format')!r})")
    return meta


def rebuild_float_model(meta: dict[str, Any], path: str | Path) -> nn.Module:
    """The float architecture a ``.qbm`` header names (its source and arguments); weights are not used.

    Files record the model source (zoo name, ``file.py:factory``, ``.onnx``/``.pt2`` file) and its
    arguments; a source that is no longer where it was is named in the error.
    """
    info = meta.get("model") or {}
    name = info.get("name")
    if not name:
        raise QuantbenchError(f"{path}: the file does not say which model it holds; pass its architecture")
    kwargs = dict(info.get("kwargs") or {})
    if "hyper" not in kwargs:  # files written before model sources: zoo build_model arguments
        from quantbench.models import build_model

        return build_model(name, **kwargs)
    from quantbench.models.sources import resolve_model

    shape = kwargs.get("input_shape")
    try:
        return resolve_model(name, hyper=kwargs["hyper"], num_classes=kwargs.get("num_classes"),
                             in_channels=kwargs.get("in_channels"), input_shape=tuple(shape) if shape else None,
                             check=False).module
    except QuantbenchError as exc:
        raise QuantbenchError(f"{path}: cannot rebuild its model {name!r}: {exc}") from None


def load_quantized(path: str | Path, model: nn.Module | None = None) -> QuantizedModel:
    """Rebuild a saved quantized model; outputs equal the model that was saved.

    Args:
        path: A file written by :func:`save_quantized`.
        model: A float template of the same architecture, needed when the file names no zoo
            model (a user's own ``nn.Module``); its weights are not used.
    """
    from quantbench.quant.artifact import read_header

    meta, tensors = load_artifact(path)
    if meta.get("format") != FORMAT:
        raise QuantbenchError(f"{path}: not a quantbench quantized model (format {meta.get('format')!r})")
    bits_of = {e["name"]: e["bits"] for e in read_header(path)["tensors"] if e["kind"] == "packed"}
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise QuantbenchError(f"{path}: tensor {key!r} holds NaN or Inf values; the file is not usable")
    try:
        plan = QuantPlan.from_dict(meta["plan"])
    except QuantbenchError as exc:
        raise QuantbenchError(f"{path}: its quantization plan is malformed ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any malformed header field
        raise QuantbenchError(f"{path}: its quantization plan is malformed ({type(exc).__name__})") from None
    if model is None:
        model = rebuild_float_model(meta, path)
    qm = prepare(model.eval(), plan)
    weights = _weight_keys(qm)
    if not weights and not any(True for _ in qm.act_quantizers()):
        raise QuantbenchError(f"{path}: its plan quantizes nothing; a .qbm holds a quantized model")
    state: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key in weights:
            continue
        state[key] = value
    try:
        qm.load_state_dict(state, strict=False)  # weights are set below from their integer codes
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise QuantbenchError(f"{path}: does not match the rebuilt model "
                              f"({first[-1].strip() if first else 'size mismatch'})") from None
    for key, (layer, fq) in weights.items():
        if key not in tensors:
            raise QuantbenchError(f"{path}: missing quantized weight {key!r}")
        if bits_of.get(key) != fq.spec.bits:
            raise QuantbenchError(f"{path}: weight {key!r} is stored with {bits_of.get(key)} bits but its plan says "
                                  f"{fq.spec.bits}")
        if tensors[key].numel() != layer.weight.numel():
            raise QuantbenchError(f"{path}: weight {key!r} has {tensors[key].numel()} values; the model's has "
                                  f"{layer.weight.numel()}")
        scale, zp = fq.qparams()
        if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            raise QuantbenchError(f"{path}: the scales of {key!r} are not finite positive numbers")
        w = dequantize(tensors[key], scale, zp, fq.spec).reshape(layer.weight.shape)
        with torch.no_grad():
            layer.weight.copy_(w)
    missing = [k for k in qm.state_dict() if k not in tensors]
    if missing:
        raise QuantbenchError(f"{path}: does not match the rebuilt model; missing {missing[:3]}")
    for name, fq in qm.act_quantizers():
        fq.calibrated = True
        fq.mode = "quant"
        if not fq.spec.dynamic:
            scale, _ = fq.qparams()
            if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
                raise QuantbenchError(f"{path}: the scale of activation quantizer {name!r} is not a finite positive "
                                      "number")
    shape = (meta.get("model") or {}).get("input_shape")
    if shape:
        qm.input_shape = tuple(shape)
    return qm.eval()
