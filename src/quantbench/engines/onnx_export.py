"""Export a float (FP32) model to ONNX, checked, with a dynamic batch axis.

This is the plain FP32 export that other engines (ONNX Runtime, OpenVINO) start from, e.g. to
compare their own post-training quantization with ours. It is *not* the export of a model
quantized by quantbench (that one carries our scales as QDQ pairs; see ``engines/export.py``).

Which exporter: torch 2.9+ defaults to the ``torch.export``-based ("dynamo") exporter, which
needs the ``onnxscript`` package. The legacy TorchScript exporter (``dynamo=False``) is still
present in torch 2.13, needs nothing beyond ``onnx``, and handles every model of our zoo, so it
is tried first; the dynamo exporter is the fallback when the legacy one is missing or fails and
``onnxscript`` is installed. The legacy exporter's deprecation notice and its harmless
"constant folding of strided Slice" notice (option-A ResNet shortcuts) are silenced; any other
warning is passed through.

Example:
    >>> path = export_fp32_onnx(build_model("resnet20"), "r20.onnx", (3, 32, 32))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
from torch import nn

from quantbench.errors import QuantbenchError

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_fp32_onnx"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_EXPORT_BATCH = 2  # dummy batch for tracing; > 1 so that nothing specialises on batch 1

# Known, harmless messages of the legacy exporter (regexes matched at the message start).
_QUIET = (
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed"),
    (UserWarning, r"Constant folding - Only steps=1 can be constant folded"),
)


def _export_legacy(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic_batch: bool) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        for category, message in _QUIET:
            warnings.filterwarnings("ignore", message=message, category=category)
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def _export_dynamo(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic_batch: bool) -> None:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=shapes,
    )
    program.save(str(path))


def export_fp32_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: tuple[int, int, int],
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``model`` (in eval mode, FP32, on CPU) to an ONNX file and validate it.

    BatchNorm is folded into the preceding convolutions by the exporter's constant folding
    (eval mode), so the graph is what an inference engine would run.

    Args:
        model: The float model; it is exported in eval mode and its train/eval mode is restored.
        path: Output ``.onnx`` file (parent folders are created).
        input_shape: ``(C, H, W)`` of one input image.
        opset: ONNX opset version.
        dynamic_batch: Make the batch axis of the input ``"input"`` and the output ``"logits"``
            symbolic (any batch size runs); otherwise the file is fixed to batch 2.

    Returns:
        The path written.

    Raises:
        QuantbenchError: ``onnx`` is not installed, a bad ``input_shape``, or no exporter
            could export the model (both errors are named).

    Example:
        >>> p = export_fp32_onnx(model, "model.onnx", (3, 32, 32))  # doctest: +SKIP
        >>> onnxruntime.InferenceSession(str(p)).run(None, {"input": x})  # doctest: +SKIP
    """
    try:
        import onnx
    except ImportError as exc:
        raise QuantbenchError("ONNX export needs the onnx package: pip install 'quantbench[onnx]'") from exc
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise QuantbenchError(f"input_shape must be (C, H, W) positive integers, got {input_shape!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.randn(_EXPORT_BATCH, *shape)
    was_training = model.training
    model.eval()
    errors: list[str] = []
    try:
        try:
            _export_legacy(model, x, path, opset, dynamic_batch)
        except Exception as exc:  # removed in a future torch, or the model is not traceable
            errors.append(f"TorchScript exporter: {type(exc).__name__}: {exc}")
            if importlib.util.find_spec("onnxscript") is None:
                errors.append("dynamo exporter: not tried, the onnxscript package is not installed")
            else:
                try:
                    _export_dynamo(model, x, path, opset, dynamic_batch)
                    errors.clear()
                except Exception as exc2:
                    errors.append(f"dynamo exporter: {type(exc2).__name__}: {exc2}")
    finally:
        model.train(was_training)
    if errors:
        raise QuantbenchError(f"ONNX export of {type(model).__name__} failed; " + "; ".join(errors))
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise QuantbenchError(f"exported ONNX file {path} is invalid: {exc}") from exc
    return path
