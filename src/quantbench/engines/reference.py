"""The engines' OWN INT8 quantizers, as references for ours.

quantbench deploys its own calibrated scales (:mod:`quantbench.engines.export_qdq`). To show
that this costs nothing, benchmarks compare against what each engine's vendor tool makes of
the same FP32 model and the same calibration images:

* ONNX Runtime: ``quant_pre_process`` then ``quantize_static`` - QDQ format, per-channel s8
  weights, u8 activations (the format ORT fuses into ``QLinearConv``), MinMax / Entropy /
  Percentile calibration, and ``reduce_range`` (7-bit weights) where ORT recommends it: on x86
  CPUs without VNNI/AMX, whose u8 x s8 kernels (``vpmaddubsw``) saturate with full-range weights
  (:func:`ort_recommended_reduce_range`);
* OpenVINO: NNCF's ``nncf.quantize`` on the OpenVINO model read from the same FP32 ONNX file
  (default preset: symmetric weights, per-channel), saved as OpenVINO IR.

The outputs are files; load them with :class:`~quantbench.engines.onnxruntime_engine.OrtSession`
or :class:`~quantbench.engines.openvino_engine.OpenVinoSession` so the session settings are
exactly the ones our own INT8 model gets.

Example:
    >>> path = ort_quantize_static(fp32_onnx, tmp / "ort_int8.onnx", calib_images)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from quantbench.engines.onnx_export import INPUT_NAME
from quantbench.errors import QuantbenchError

__all__ = ["ORT_CALIBRATION", "nncf_quantize_openvino", "ort_quantize_static", "ort_recommended_reduce_range"]

ORT_CALIBRATION = ("minmax", "entropy", "percentile")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The vendor tools print progress and advice on stdout and the root logger; keep output readable."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _batches(images: np.ndarray, batch: int) -> list[np.ndarray]:
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) < 1:
        raise QuantbenchError(f"calibration images must be (N, C, H, W) with N >= 1, got shape {images.shape}")
    return [images[i:i + batch] for i in range(0, len(images), batch)]


def ort_recommended_reduce_range() -> bool:
    """ONNX Runtime's advice for this CPU: ``reduce_range=True`` (7-bit weights) where its u8 x s8 kernels saturate.

    ORT's quantization guide: on x86-64 with AVX2/AVX-512 but without VNNI, U8S8 uses ``vpmaddubsw``,
    which can saturate; use ``reduce_range`` there. With VNNI/AMX, or on Arm, full-range weights are exact.
    """
    from quantbench.engines.base import int8_saturates

    return int8_saturates()[0]


def ort_quantize_static(fp32_onnx: str | Path, out: str | Path, calib_images: np.ndarray, *,
                        method: str = "minmax", batch: int = 16, reduce_range: bool | None = None) -> Path:
    """ONNX Runtime's own static INT8 model of ``fp32_onnx`` (QDQ, per-channel s8 weights, u8 activations).

    Args:
        fp32_onnx: the FP32 ONNX file (input named ``input``, as quantbench exports it).
        out: where to write the quantized ONNX file.
        calib_images: float32 ``(N, C, H, W)`` calibration images (already normalised).
        method: ``minmax``, ``entropy`` or ``percentile`` (ORT's own defaults for each).
        batch: images per calibration feed.
        reduce_range: 7-bit weights; None: what ORT recommends for this CPU (:func:`ort_recommended_reduce_range`).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in ORT_CALIBRATION:
        raise QuantbenchError(f"ORT calibration method {method!r} unknown; choose from {', '.join(ORT_CALIBRATION)}")
    feeds = _batches(calib_images, batch)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{INPUT_NAME: f} for f in feeds])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    out = Path(out)
    pre = out.with_name(out.stem + "_pre.onnx")
    with _quiet():
        quant_pre_process(str(fp32_onnx), str(pre))
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=ort_recommended_reduce_range() if reduce_range is None else reduce_range,
                        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                          "percentile": CalibrationMethod.Percentile}[method],
                        calibration_providers=["CPUExecutionProvider"])  # fmt: skip
    pre.unlink(missing_ok=True)
    return out


def nncf_quantize_openvino(fp32_onnx: str | Path, out_xml: str | Path, calib_images: np.ndarray, *,
                           batch: int = 1, **nncf_kwargs: Any) -> Path:
    """NNCF's own INT8 OpenVINO model of ``fp32_onnx`` (default preset), saved as IR (``.xml`` + ``.bin``).

    ``nncf_kwargs`` go to ``nncf.quantize`` (e.g. ``preset``, ``fast_bias_correction``).
    """
    try:
        import nncf
    except ImportError as exc:
        raise QuantbenchError(f"NNCF is not installed ({exc}); pip install 'quantbench[nncf]'") from None
    import openvino as ov

    feeds = _batches(calib_images, batch)
    model = ov.Core().read_model(str(fp32_onnx))
    if batch != 1 or any(len(f) != batch for f in feeds):
        model.reshape({0: [-1, *feeds[0].shape[1:]]})
    with _quiet():
        qmodel = nncf.quantize(model, nncf.Dataset(feeds), subset_size=sum(len(f) for f in feeds), **nncf_kwargs)
    out_xml = Path(out_xml)
    ov.save_model(qmodel, str(out_xml), compress_to_fp16=False)
    return out_xml
