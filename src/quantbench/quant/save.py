"""Save a quantized model with its integer weights really packed; load it back exactly.

The file is a lean :mod:`quantbench.quant.artifact_lean` container (format 2): quantized
weights as bit-packed integer codes (INT2 four per byte, INT4 two per byte, any width
densely), every other tensor in the smallest encoding of :mod:`quantbench.quant.pack_float`
that reproduces it bit for bit (zero points that are all zero take no bytes, half-exact
scales take two). The header records the zoo model, its constructor arguments and the
:class:`QuantPlan`, so :func:`load_quantized` rebuilds the same prepared graph (which names
and shapes the tensors) and the reloaded model computes bit-identical outputs. Its size on
disk is the size quantbench reports. Format-1 files (:mod:`quantbench.quant.artifact`) still load.

``lean=True`` first rounds the model's own float parameters IN PLACE to small encodings -
per-channel weight scales to SF8 (1 byte, <= 1.6% off; the integer codes are kept, so the
weights move with their scale), biases to Q8 (1 byte, power-of-two step per tensor),
activation scales to half precision - so the file stays exact and the model that is then
evaluated is the model in the file. Mixed-precision plans (chosen to fit a file size) are
always saved lean; their runs save before they evaluate.

Example:
    >>> nbytes = save_quantized(qm, "m.qbm", model_name="resnet20", lean=True)  # doctest: +SKIP
    >>> qm2 = load_quantized("m.qbm")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.artifact import load_artifact, read_header
from quantbench.quant.artifact_lean import fingerprint, is_lean, load_lean, read_lean_header, save_lean
from quantbench.quant.fake import FakeQuant, dequantize, quantize
from quantbench.quant.pack_float import F16, PACKED, Q8, SF8, ZEROS, encode, f16_round, q8_round, sf8_round
from quantbench.quant.prepare import QuantizedModel, prepare
from quantbench.quant.spec import QuantPlan

FORMAT = "quantbench-quantized-model"
FORMAT_VERSION = 2


def _weight_keys(qm: QuantizedModel) -> dict[str, Any]:
    """state_dict key of each quantized weight -> (layer module, spec)."""
    out = {}
    for name, fq in qm.weight_quantizers():
        out[f"net.{name}.weight"] = (qm.layer(name), fq)
    return out


def _exact_qparams(fq: FakeQuant) -> bool:
    """Whether ``fq``'s parameters are static, linear and calibrated (the ones lean rounding may touch)."""
    return fq.calibrated and not fq.spec.dynamic and fq.spec.companding == "none"


def round_for_file(qm: QuantizedModel) -> QuantizedModel:
    """Round ``qm``'s scales and biases in place to what a lean file stores in one or two bytes.

    Weight scales -> :func:`~quantbench.quant.pack_float.sf8_round`, keeping each weight's
    integer code (so AdaRound's or QAT's rounding decisions survive); biases of quantized layers
    -> :func:`~quantbench.quant.pack_float.q8_round`; static activation scales -> half precision.
    Idempotent. Returns ``qm``.

    Example:
        >>> qm = round_for_file(qm)  # doctest: +SKIP
    """
    with torch.no_grad():
        for name, fq in qm.weight_quantizers():
            layer = qm.layer(name)
            if _exact_qparams(fq):
                scale, zp = fq.qparams()
                codes = quantize(layer.weight.detach(), scale, zp, fq.spec)
                lean = sf8_round(scale).to(scale.device)
                fq.scale.data = lean.clone()
                layer.weight.copy_(dequantize(codes, lean, zp, fq.spec).reshape(layer.weight.shape))
            if getattr(layer, "bias", None) is not None:
                layer.bias.copy_(q8_round(layer.bias).to(layer.bias.device))
        for _, fq in qm.act_quantizers():
            if _exact_qparams(fq):
                fq.scale.data = f16_round(fq.scale.detach().abs()).to(fq.scale.device)
    return qm


def _preferred(qm: QuantizedModel) -> dict[str, tuple[int, int, bool]]:
    """state_dict key -> the encoding its role is rounded to (size then does not depend on the values)."""
    prefer: dict[str, tuple[int, int, bool]] = {}
    for mod_name, mod in qm.named_modules():
        if isinstance(mod, FakeQuant) and not mod.spec.dynamic and mod.spec.companding == "none":
            prefer[f"{mod_name}.scale"] = (SF8 if mod.role == "weight" else F16, 0, False)
            prefer[f"{mod_name}.zero_point"] = ((ZEROS, 0, False) if mod.spec.symmetric
                                                else (PACKED, mod.spec.bits, mod.spec.signed))
    for name, _ in qm.weight_quantizers():
        prefer[f"net.{name}.bias"] = (Q8, 0, False)
    return prefer


def save_quantized(
    qm: QuantizedModel,
    path: str | Path,
    *,
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    extra: dict[str, Any] | None = None,
    lean: bool | None = None,
) -> int:
    """Write ``qm`` to ``path``; returns the file's size in bytes.

    Args:
        qm: A prepared and calibrated model.
        path: Output file (written atomically).
        model_name: Zoo name to rebuild the architecture on load (None: the loader needs a template).
        model_kwargs: ``build_model`` arguments (num_classes, in_channels, hyper-parameters).
        input_shape: (C, H, W) the model expects, recorded for engines and bundles.
        extra: Free JSON metadata (calibration set, algorithm, ...).
        lean: First :func:`round_for_file` (changes ``qm``: evaluate it after saving). None (default):
            only for a mixed-precision plan (scheme ``mixed-*``), whose bits were chosen to fit a file size.
    """
    if lean is None:
        lean = qm.plan.scheme.startswith("mixed")
    if lean:
        round_for_file(qm)
    weights = _weight_keys(qm)
    prefer = _preferred(qm)
    names, encoded = [], []
    for key, value in qm.state_dict().items():
        if key in weights:
            layer, fq = weights[key]
            scale, zp = fq.qparams()
            codes = quantize(layer.weight.detach(), scale, zp, fq.spec)
            encoded.append(encode(codes, (PACKED, fq.spec.bits, fq.spec.signed)))
        else:
            encoded.append(encode(value.detach().cpu().contiguous(), prefer.get(key)))
        names.append(key)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": model_name, "kwargs": model_kwargs or {}, "input_shape": list(input_shape or [])},
        "plan": qm.plan.as_dict(),
        "extra": extra or {},
    }
    return save_lean(path, meta, names, encoded)


def read_quantized_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a saved quantized model (format 1 or 2), without reading its tensors."""
    meta = (read_lean_header(path) if is_lean(path) else read_header(path)).get("meta", {})
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


def _parse_plan(meta: dict[str, Any], path: str | Path) -> QuantPlan:
    if meta.get("format") != FORMAT:
        raise QuantbenchError(f"{path}: not a quantbench quantized model (format {meta.get('format')!r})")
    try:
        return QuantPlan.from_dict(meta["plan"])
    except QuantbenchError as exc:
        raise QuantbenchError(f"{path}: its quantization plan is malformed ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any malformed header field
        raise QuantbenchError(f"{path}: its quantization plan is malformed ({type(exc).__name__})") from None


def _prepared(meta: dict[str, Any], path: str | Path, model: nn.Module | None) -> QuantizedModel:
    plan = _parse_plan(meta, path)
    if model is None:
        model = rebuild_float_model(meta, path)
    qm = prepare(model.eval(), plan)
    if not _weight_keys(qm) and not any(True for _ in qm.act_quantizers()):
        raise QuantbenchError(f"{path}: its plan quantizes nothing; a .qbm holds a quantized model")
    return qm


def _read(path: str | Path, model: nn.Module | None) -> tuple[dict[str, Any], QuantizedModel, dict[str, torch.Tensor],
                                                              dict[str, int]]:
    """(meta, the rebuilt prepared model, tensors by state_dict key, bits of each packed tensor), either format."""
    if not is_lean(path):  # format 1: names, shapes and bits in its JSON header
        meta, tensors = load_artifact(path)
        bits_of = {e["name"]: e["bits"] for e in read_header(path)["tensors"] if e["kind"] == "packed"}
        return meta, _prepared(meta, path, model), tensors, bits_of
    head, flat = load_lean(path)
    meta = head["meta"]
    qm = _prepared(meta, path, model)
    state = qm.state_dict()
    if len(state) != len(flat) or fingerprint(list(state)) != head["fingerprint"]:
        raise QuantbenchError(f"{path}: does not match the rebuilt model (it holds {len(flat)} tensors laid out "
                              f"differently from the {len(state)} of the model its header names)")
    tensors, bits_of = {}, {}
    for (key, want), got, info in zip(state.items(), flat, head["tensors"], strict=True):
        if got.numel() == want.numel():
            got = got.reshape(want.shape)
        elif want.dim() != 0:  # a scalar placeholder takes the saved per-channel shape
            raise QuantbenchError(f"{path}: does not match the rebuilt model (tensor {key!r} has {got.numel()} values; "
                                  f"the model's has {want.numel()})")
        tensors[key] = got
        if info["enc"] == "packed":
            bits_of[key] = info["bits"]
    return meta, qm, tensors, bits_of


def load_quantized(path: str | Path, model: nn.Module | None = None) -> QuantizedModel:
    """Rebuild a saved quantized model (format 1 or 2); outputs equal the model that was saved.

    Args:
        path: A file written by :func:`save_quantized`.
        model: A float template of the same architecture, needed when the file names no zoo
            model (a user's own ``nn.Module``); its weights are not used.
    """
    meta, qm, tensors, bits_of = _read(path, model)
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise QuantbenchError(f"{path}: tensor {key!r} holds NaN or Inf values; the file is not usable")
    weights = _weight_keys(qm)
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
