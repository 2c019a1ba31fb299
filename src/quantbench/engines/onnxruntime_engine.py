"""ONNX Runtime (CPUExecutionProvider): fp32, int8 (OUR QDQ scales) and ORT's own dynamic quantization.

* ``fp32``: :func:`~quantbench.engines.onnx_export.export_fp32_onnx` (BN folded by the exporter).
* ``int8``: :func:`~quantbench.engines.export_qdq.export_qdq_onnx` - u8 activations / s8
  per-channel weights / int32 bias, the format ORT fuses into ``QLinearConv``, ``QLinearAdd``,
  ``QGemm`` (s8/s8 activations were 2-3x slower here). The scales are ours, so the accuracy is
  the simulated one. On x86 CPUs without VNNI the same weight values are stored as u8 codes with
  zero point 128 (``info["weight_type"]``): ORT's u8 x s8 kernels saturate there, u8 x u8 do not
  (:func:`~quantbench.engines.export_qdq.ort_weight_type`).
* ``dynamic``: ``onnxruntime.quantization.quantize_dynamic`` on the FP32 file (per-channel
  QInt8 weights, activations u8 per batch). That is ORT's definition of dynamic quantization;
  on CNNs it runs ``ConvInteger`` + float rescaling and is usually SLOWER than fp32 - measured,
  not hidden.

Sessions use ``intra_op_num_threads=threads`` (0 = ORT's default when None), one inter-op
thread, sequential execution and all graph optimizations.

``onnxruntime-cuda`` runs the same fp32 and int8 files on the CUDAExecutionProvider where the
installed onnxruntime has it (the ``onnxruntime-gpu`` wheel on a CUDA machine); elsewhere it is
listed as unavailable with the reason. A session that ORT would silently place on the CPU is
refused instead. Its runner binds a device-resident input and output once (IOBinding), so the
timed call is the GPU inference, not host-device copies; ``run_with_iobinding`` returns after the
CUDA stream has finished.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from quantbench.engines.base import ENGINES, Deployable, Engine, Session, file_info
from quantbench.engines.onnx_export import INPUT_NAME, export_fp32_onnx
from quantbench.errors import QuantbenchError

__all__ = ["OnnxRuntimeCudaEngine", "OnnxRuntimeEngine", "OrtSession", "optimized_op_counts", "session_options"]

_PRECISION = {
    "fp32": "fp32",
    "int8": "int8 static QDQ (u8 activations, s8 per-channel weights, int32 bias), quantbench scales",
    "dynamic": "ORT dynamic quantization (s8 per-channel weights offline, u8 activations per batch)",
}


def session_options(
    threads: int | None, *, optimized_path: str | Path | None = None, level: str = "all"
) -> Any:
    """The SessionOptions every quantbench ORT session uses (optionally saving the optimized graph)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or 0)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[level]
    opts.log_severity_level = 3  # errors only
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    return opts


def optimized_op_counts(
    model_path: str | Path, workdir: str | Path, *, level: str = "extended"
) -> dict[str, int]:
    """Operator counts of the graph ORT actually runs after its optimizations.

    Why: whether ORT fused a QDQ graph into integer kernels (``QLinearConv``, ``QGemm``...) or
    left float ``Conv`` with Q/DQ around it is what decides INT8 speed. ``"extended"`` is the
    portable level (``"all"`` adds CPU-specific layout ops).

    Example:
        >>> optimized_op_counts("m_int8.onnx", "/tmp")["QLinearConv"]  # doctest: +SKIP
        19
    """
    import onnx
    import onnxruntime as ort

    out = Path(workdir) / (Path(model_path).stem + f".ort-{level}.onnx")
    ort.InferenceSession(
        str(model_path),
        session_options(1, optimized_path=out, level=level),
        providers=["CPUExecutionProvider"],
    )
    counts = Counter(n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node)
    return dict(counts)


CUDA_PROVIDER = "CUDAExecutionProvider"


class OrtSession(Session):
    """An ``onnxruntime.InferenceSession`` on the CPU provider (or, ``provider=CUDA_PROVIDER``, the GPU)."""

    def __init__(
        self, path: Path, input_shape: tuple[int, int, int], threads: int | None, variant: str,
        provider: str = "CPUExecutionProvider",
    ) -> None:  # fmt: skip
        import onnxruntime as ort

        providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
        except Exception as exc:  # ORT's own errors (invalid graph, unsupported op)
            raise QuantbenchError(f"onnxruntime could not load {path}: {type(exc).__name__}: {exc}") from exc
        if self.session.get_providers()[0] != provider:
            raise QuantbenchError(f"onnxruntime placed {path} on {self.session.get_providers()[0]}, not {provider}")
        self.provider = provider
        info = {
            "engine": "onnxruntime" if provider == "CPUExecutionProvider" else "onnxruntime-cuda",
            "version": ort.__version__,
            "provider": self.session.get_providers()[0],
            "precision": _PRECISION[variant],
            "graph_optimization": "all",
            **file_info(path),
        }
        super().__init__(input_shape, info)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = self.check_input(x)
        return np.asarray(self.session.run(None, {INPUT_NAME: x})[0], dtype=np.float32)

    def runner(self, batch_size: int) -> Callable[[], object]:
        sess = self.session
        if self.provider == CUDA_PROVIDER:
            import onnxruntime as ort

            binding = sess.io_binding()
            self._keep.append(ort.OrtValue.ortvalue_from_numpy(self.example_batch(batch_size), "cuda", 0))
            binding.bind_ortvalue_input(INPUT_NAME, self._keep[-1])
            binding.bind_output(sess.get_outputs()[0].name, "cuda", 0)
            return lambda: sess.run_with_iobinding(binding)
        feeds = {INPUT_NAME: self.example_batch(batch_size)}
        return lambda: sess.run(None, feeds)


@ENGINES.register("onnxruntime", description="ONNX Runtime CPU: fp32, int8 QDQ (our scales), dynamic")
class OnnxRuntimeEngine(Engine):
    """ONNX Runtime on the CPU execution provider."""

    name = "onnxruntime"
    variants = ("fp32", "int8", "dynamic")
    package = "onnxruntime"
    extra = "onnx"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        ok, reason = super().available()
        if ok:
            import importlib.util

            if importlib.util.find_spec("onnx") is None:
                return (
                    False,
                    "the onnx package (needed to export models) is not installed (pip install 'quantbench[onnx]')",
                )
        return ok, reason

    def load(self, model: Deployable, variant: str, *, threads: int | None, workdir: Path) -> Session:
        from quantbench.engines.export_qdq import ort_weight_type

        weight_type = ort_weight_type(model.quantized if variant == "int8" else None)
        path = build_onnx(model, variant, workdir, weight_type=weight_type)
        session = OrtSession(path, model.input_shape, threads, variant)
        if variant == "int8":
            session.info["weight_type"] = weight_type
        return session


def build_onnx(model: Deployable, variant: str, workdir: Path, *, weight_type: str = "int8") -> Path:
    """The ONNX file an ORT/OpenVINO session of ``variant`` runs (written into ``workdir``).

    ``weight_type`` (int8 only): the storage of our weight codes, see
    :func:`~quantbench.engines.export_qdq.ort_weight_type`.
    """
    workdir = Path(workdir)
    if variant == "int8":
        from quantbench.engines.export_qdq import export_qdq_onnx

        return export_qdq_onnx(model.quantized, workdir / f"{model.name}_int8_qdq.onnx", model.input_shape,
                               weight_type=weight_type)
    fp32 = export_fp32_onnx(model.float_model, workdir / f"{model.name}_fp32.onnx", model.input_shape)
    if variant in ("fp32", "bf16"):
        return fp32
    if variant == "dynamic":
        return _quantize_dynamic(fp32, workdir / f"{model.name}_dynamic.onnx")
    raise QuantbenchError(f"no ONNX file for variant {variant!r}")


def _quantize_dynamic(fp32: Path, out: Path) -> Path:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the quantizer logs a pre-processing advice at WARNING on every call
    try:
        quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8)
    except Exception as exc:
        raise QuantbenchError(
            f"onnxruntime quantize_dynamic failed on {fp32}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        logger.setLevel(level)
    return out


@ENGINES.register("onnxruntime-cuda", description="ONNX Runtime CUDAExecutionProvider (onnxruntime-gpu): fp32, int8 QDQ")
class OnnxRuntimeCudaEngine(OnnxRuntimeEngine):
    """ONNX Runtime on the CUDA execution provider, where the installed build has it."""

    name = "onnxruntime-cuda"
    variants = ("fp32", "int8")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        ok, reason = super().available()
        if not ok:
            return ok, reason
        import onnxruntime as ort

        if CUDA_PROVIDER not in ort.get_available_providers():
            return False, (f"onnxruntime {ort.__version__} has no {CUDA_PROVIDER} (providers: "
                           f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu on a CUDA machine")
        return True, ""

    def load(self, model: Deployable, variant: str, *, threads: int | None, workdir: Path) -> Session:
        path = build_onnx(model, variant, workdir)
        return OrtSession(path, model.input_shape, threads, variant, provider=CUDA_PROVIDER)
