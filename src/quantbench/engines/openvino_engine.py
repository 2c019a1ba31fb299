"""OpenVINO (CPU plugin): fp32 and bf16 from the FP32 ONNX file, int8 from OUR QDQ ONNX file.

OpenVINO reads QuantizeLinear/DequantizeLinear pairs as FakeQuantize operations and its
low-precision transformations run the convolutions on INT8 kernels with exactly those scales
(``info["int8_layers"]`` counts the layers that really run in u8/i8, from the compiled
model's runtime graph), so the ``int8`` variant deploys our calibration, not OpenVINO's.

Settings: ``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_NUM_THREADS=threads`` and an explicit
``INFERENCE_PRECISION_HINT`` (``f32`` for fp32 and int8 - on CPUs with BF16 OpenVINO would
otherwise silently run float parts in bf16 - and ``bf16`` for bf16, offered only where the CPU
plugin reports the BF16 capability). ``run`` uses a model with a dynamic batch axis;
``runner(b)`` compiles the model reshaped to a static batch ``b`` (what a fixed-batch
deployment does; about 10-20% faster at batch 1 here).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from quantbench.engines.base import ENGINES, Deployable, Engine, Session, file_info
from quantbench.errors import QuantbenchError

__all__ = ["OpenVinoEngine", "OpenVinoSession"]

_HINT = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}
_PRECISION = {
    "fp32": "fp32",
    "bf16": "bf16 (INFERENCE_PRECISION_HINT=bf16)",
    "int8": "int8 from QDQ ONNX with quantbench scales (FakeQuantize -> INT8 kernels), f32 elsewhere",
}


def _core() -> Any:
    import openvino as ov

    return ov.Core()


def runtime_precisions(compiled: Any) -> dict[str, int]:
    """``{runtimePrecision: count}`` of the ops OpenVINO actually executes."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        counts[str(rt["runtimePrecision"].astype(str)) if "runtimePrecision" in rt else "?"] += 1
    return dict(counts)


def int8_layers(compiled: Any) -> int:
    """Number of Convolution/FullyConnected/MatMul layers executed in u8/i8."""
    n = 0
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        kind = str(rt["layerType"].astype(str)) if "layerType" in rt else ""
        prec = str(rt["runtimePrecision"].astype(str)) if "runtimePrecision" in rt else ""
        if kind in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution") and prec in ("u8", "i8"):
            n += 1
    return n


class OpenVinoSession(Session):
    """A compiled OpenVINO model on the CPU plugin."""

    def __init__(
        self, path: Path, input_shape: tuple[int, int, int], threads: int | None, variant: str
    ) -> None:
        import openvino as ov

        self.core = _core()
        self.path = path
        self.config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": _HINT[variant],
        }
        if threads is not None:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = self.core.compile_model(self.core.read_model(str(path)), "CPU", self.config)
        except Exception as exc:
            raise QuantbenchError(f"openvino could not compile {path}: {type(exc).__name__}: {exc}") from exc
        self.request = self.compiled.create_infer_request()
        self._static: dict[int, Any] = {}
        info = {
            "engine": "openvino",
            "version": ov.get_version(),
            "provider": "CPU",
            "precision": _PRECISION[variant],
            "config": dict(self.config),
            "runner": "static batch (model reshaped to the runner's batch size)",
            **file_info(path),
        }
        if variant == "int8":
            info["int8_layers"] = int8_layers(self.compiled)
        super().__init__(input_shape, info)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = self.check_input(x)
        self.request.infer({0: x})
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def runner(self, batch_size: int) -> Callable[[], object]:
        x = self.example_batch(batch_size)
        b = int(batch_size)
        if b not in self._static:
            model = self.core.read_model(str(self.path))
            model.reshape({0: [b, *self.input_shape]})
            self._static[b] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        request = self._static[b]
        feeds = {0: x}
        return lambda: request.infer(feeds)


@ENGINES.register("openvino", description="OpenVINO CPU: fp32, bf16, int8 from our QDQ ONNX")
class OpenVinoEngine(Engine):
    """OpenVINO runtime on the CPU plugin (models arrive as ONNX files)."""

    name = "openvino"
    variants = ("fp32", "bf16", "int8")
    package = "openvino"
    extra = "openvino"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        ok, reason = super().available()
        if not ok:
            return ok, reason
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            return (
                False,
                "the onnx package (needed to export models) is not installed (pip install 'quantbench[openvino]')",
            )
        return True, ""

    @classmethod
    def supports(cls, variant: str) -> tuple[bool, str]:
        ok, reason = super().supports(variant)
        if not ok or variant != "bf16":
            return ok, reason
        ok, reason = cls.available()
        if not ok:
            return ok, reason
        caps = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            return (
                False,
                f"the OpenVINO CPU plugin reports no BF16 capability on this CPU (it has: {', '.join(caps)})",
            )
        return True, ""

    def load(self, model: Deployable, variant: str, *, threads: int | None, workdir: Path) -> Session:
        from quantbench.engines.onnxruntime_engine import build_onnx

        path = build_onnx(model, variant, workdir)
        return OpenVinoSession(path, model.input_shape, threads, variant)
