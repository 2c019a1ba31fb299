"""Export a quantized model to the files users deploy, each checked against the simulation.

Formats:

* ``onnx`` - QDQ ONNX carrying OUR scales and integer weight codes (s8, zero point 0: the
  portable storage; any ONNX runtime);
* ``openvino`` - OpenVINO IR (``.xml`` + ``.bin``) converted from that QDQ graph, which the CPU
  plugin runs with INT8 kernels;
* ``tflite`` - a LiteRT flatbuffer with int8 ops and the same scales (batch 1, where litert-torch
  is installed).

Every file is loaded back in its own runtime and run on the same images as the simulated model
(:class:`~quantbench.quant.prepare.QuantizedModel`): the maximum logit difference and the top-1
agreement are reported, so "what we simulate is what we deploy" is checked, not assumed.

Example:
    >>> files = export_quantized(qm, "deploy/", formats=("onnx",), input_shape=(3, 32, 32))  # doctest: +SKIP
    >>> files[0].max_abs_diff < 0.05  # doctest: +SKIP
    True
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantbench.config import option
from quantbench.errors import QuantbenchError
from quantbench.experiments.options import Normalize
from quantbench.progress import bar

__all__ = ["EXPORT_FORMATS", "ExportConfig", "ExportedFile", "available_formats", "export_quantized", "format_of"]

EXPORT_FORMATS = ("onnx", "openvino", "tflite")


@dataclass(frozen=True)
class ExportConfig(Normalize):
    """``quantbench export QBM``: which files to write and which images check them."""

    out: str | None = option(None, "folder for the exported files", metavar="DIR")
    formats: tuple[str, ...] = option((), "onnx, openvino, tflite (default: every one whose runtime is installed)",
                                      metavar="LIST", choices=EXPORT_FORMATS)
    data: str | None = option(None, "images to check the files on (default: 8 seeded random images)",
                              metavar="SPEC")
    check_images: int = option(8, "images the check runs", metavar="N", ge=1, le=10000)

    def check(self) -> None:
        if not self.out:
            raise QuantbenchError("export: --out DIR is required")


def available_formats() -> tuple[str, ...]:
    """The export formats whose converter and runtime are installed here."""
    import importlib.util

    from quantbench.engines.base import get_engine

    out = []
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        out.append("onnx")
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("onnx"):
        out.append("openvino")
    if get_engine("litert").available()[0]:
        out.append("tflite")
    return tuple(out)


@dataclass
class ExportedFile:
    """One written file and how closely its runtime reproduces the simulation."""

    format: str
    path: str
    bytes: int
    runtime: str
    max_abs_diff: float
    top1_agreement: float
    images: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_of(path: str | Path) -> str:
    """The export format a file name asks for (``.onnx``, ``.xml`` OpenVINO IR, ``.tflite``).

    Example:
        >>> format_of("m.onnx"), format_of("m.xml"), format_of("m.tflite")
        ('onnx', 'openvino', 'tflite')
    """
    suffix = Path(path).suffix.lower()
    fmt = {".onnx": "onnx", ".xml": "openvino", ".tflite": "tflite"}.get(suffix)
    if fmt is None:
        raise QuantbenchError(f"{path}: cannot tell the format from {suffix or 'no suffix'}; use .onnx, .xml "
                              "(OpenVINO IR) or .tflite")
    return fmt


def _check(name: str, runtime: str, run: Callable[[np.ndarray], np.ndarray], reference: np.ndarray,
           samples: np.ndarray, path: Path) -> ExportedFile:
    got = np.concatenate([np.asarray(run(samples[i:i + 1]), dtype=np.float32).reshape(1, -1)
                          for i in range(len(samples))])
    diff = float(np.abs(got - reference).max())
    agree = float((got.argmax(1) == reference.argmax(1)).mean())
    size = sum(p.stat().st_size for p in path.parent.glob(path.stem + ".*")) if name == "openvino" else \
        path.stat().st_size
    return ExportedFile(name, str(path), int(size), runtime, diff, agree, len(samples))


def export_quantized(qm: Any, out_dir: str | Path, *, formats: Sequence[str] = ("onnx",),
                     input_shape: tuple[int, int, int], name: str = "model", samples: Any = None,
                     float_model: torch.nn.Module | None = None, progress: bool = False) -> list[ExportedFile]:
    """Write ``qm`` in each of ``formats`` into ``out_dir`` and check every file against the simulation.

    Args:
        qm: A prepared, calibrated :class:`~quantbench.quant.prepare.QuantizedModel`.
        input_shape: (C, H, W) of one image.
        name: Stem of the written files.
        samples: Images to check on (N x C x H x W tensor or array); default 8 seeded random images.
        float_model: The float model (LiteRT conversion needs one; default: ``qm``'s own graph).
        progress: A bar of formats written and checked, on stderr (OpenVINO and LiteRT conversions take
            seconds to minutes).

    Raises:
        QuantbenchError: an unknown format, a runtime that is not installed (naming the package), a
            quantization the format cannot hold, or a failed conversion.
    """
    from quantbench.quant.prepare import QuantizedModel

    if not isinstance(qm, QuantizedModel):
        raise QuantbenchError(f"export needs a quantized model (from quantize/load_quantized), got {type(qm).__name__}")
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise QuantbenchError(f"export: format {','.join(unknown) or '(none)'!r} unknown; expected a comma list of "
                              f"{', '.join(EXPORT_FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if samples is None:
        samples = torch.randn((8, *input_shape), generator=torch.Generator().manual_seed(0))
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    with torch.no_grad():
        reference = qm.eval()(x).numpy()
    x_np = x.numpy()
    files: list[ExportedFile] = []
    todo = list(dict.fromkeys(formats))
    with bar(total=len(todo), desc="export", unit="file", enabled=progress) as shown:
        for fmt in todo:
            shown.set_postfix_str(fmt)
            files.append(_EXPORTERS[fmt](qm, out, name, input_shape, x_np, reference, float_model))
            shown.update(1)
    return files


def _onnx(qm: Any, out: Path, name: str, shape: tuple[int, int, int], x: np.ndarray, ref: np.ndarray,
          float_model: Any) -> ExportedFile:
    from quantbench.engines.export_qdq import export_qdq_onnx

    path = export_qdq_onnx(qm, out / f"{name}_int8.onnx", shape)
    try:
        import onnxruntime as ort
    except ImportError:
        raise QuantbenchError("export onnx: checking the file needs onnxruntime (pip install 'quantbench[onnx]')"
                              ) from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    return _check("onnx", f"onnxruntime {ort.__version__}", lambda b: sess.run(None, {feed: b})[0], ref, x, path)


def _openvino(qm: Any, out: Path, name: str, shape: tuple[int, int, int], x: np.ndarray, ref: np.ndarray,
              float_model: Any) -> ExportedFile:
    try:
        import openvino as ov
    except ImportError:
        raise QuantbenchError("export openvino: needs the openvino package (pip install 'quantbench[openvino]')"
                              ) from None
    from quantbench.engines.export_qdq import export_qdq_onnx

    with tempfile.TemporaryDirectory(prefix="quantbench-export-") as tmp:
        onnx_path = export_qdq_onnx(qm, Path(tmp) / f"{name}.onnx", shape)
        model = ov.convert_model(str(onnx_path))
    xml = out / f"{name}_int8.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU")
    request = compiled.create_infer_request()

    def run(b: np.ndarray) -> np.ndarray:
        request.infer({0: b})
        return np.array(request.get_output_tensor(0).data, copy=True)

    return _check("openvino", f"openvino {ov.get_version()}", run, ref, x, xml)


def _tflite(qm: Any, out: Path, name: str, shape: tuple[int, int, int], x: np.ndarray, ref: np.ndarray,
            float_model: Any) -> ExportedFile:
    from quantbench.engines.base import Deployable, get_engine
    from quantbench.engines.litert_engine import load_tflite
    from quantbench.engines.litert_export import export_tflite

    ok, reason = get_engine("litert").available()
    if not ok:
        raise QuantbenchError(f"export tflite: {reason}")
    dep = Deployable(float_model if float_model is not None else qm.net, qm, shape, name=name)
    with tempfile.TemporaryDirectory(prefix="quantbench-export-") as tmp:
        built = export_tflite(dep, "int8", Path(tmp), batch=1)
        path = out / f"{name}_int8.tflite"
        shutil.copyfile(built, path)
    run = load_tflite(path, None)
    return _check("tflite", "ai-edge-litert (XNNPACK)", run, ref, x, path)


_EXPORTERS = {"onnx": _onnx, "openvino": _openvino, "tflite": _tflite}
