"""LiteRT (TensorFlow Lite) on the CPU with XNNPACK: fp32, LiteRT's dynamic-range int8, and int8 with OUR scales.

Models come from :func:`~quantbench.engines.litert_export.export_tflite` (litert-torch, the
``litert`` extra) and run in ``ai_edge_litert.interpreter.Interpreter`` with ``num_threads=threads``
(None: LiteRT's default) and its default XNNPACK delegate - what an Android phone or a Raspberry
Pi runs.

A ``.tflite`` file has a fixed batch size (see ``export_tflite``), so the session keeps one
converted file and interpreter per batch size: ``runner(b)`` uses a file converted at batch ``b``
(a fixed-batch deployment, like OpenVINO's static reshape), ``run`` feeds chunks of
:data:`RUN_BATCH` images (the last chunk zero-padded; images do not interact) or single images.
Where the converter made the input or output tensor int8 (static ``int8`` models), the session
quantizes images with the input tensor's scale and zero point (round half to even, as our
simulation) and dequantizes int8 logits; ``runner`` quantizes its random batch once, before
timing, so the timed call is ``set_tensor`` + ``invoke`` exactly as for float models.
``info["ops"]`` counts the operators of the flatbuffer and ``info["int8_layers"]`` the
conv/fully-connected ops with int8 inputs (those run on integer kernels).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from quantbench.engines.base import ENGINES, Deployable, Engine, Session, file_info
from quantbench.engines.native_stderr import held_stderr
from quantbench.errors import QuantbenchError
from quantbench.measure.environment import package_version

__all__ = ["LiteRTEngine", "LiteRTSession", "load_tflite", "tflite_op_counts"]

_PRECISION = {
    "fp32": "fp32",
    "int8": "int8 static (int8 activations, per-channel int8 weights, int32 bias), quantbench scales",
    "dynamic": "LiteRT dynamic range (int8 per-channel weights offline, activations quantized per batch)",
}
_INT_LAYERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _without_delegate_notice(text: str, failed: bool) -> str:
    """Everything the runtime wrote to stderr but its "INFO: Created TensorFlow Lite XNNPACK delegate" line."""
    return "".join(ln for ln in text.splitlines(keepends=True)
                   if not ln.startswith("INFO: Created TensorFlow Lite XNNPACK delegate"))


def _interpreter(model_path: str | Path, num_threads: int | None, **kwargs: Any) -> Any:
    """An allocated LiteRT interpreter (``num_threads`` None: LiteRT chooses), without the delegate notice."""
    from ai_edge_litert.interpreter import Interpreter

    with held_stderr(_without_delegate_notice):
        it = Interpreter(model_path=str(model_path), num_threads=num_threads, **kwargs)
        it.allocate_tensors()
    return it


def tflite_op_counts(path: str | Path) -> tuple[dict[str, int], int]:
    """``({op name: count}, int8 conv/FC layers)`` of a ``.tflite`` file (before delegation)."""
    it = _interpreter(path, 1, experimental_op_resolver_type=_no_delegate_resolver())
    ops = it._get_ops_details()  # noqa: SLF001 - LiteRT's only public-enough op listing
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    counts = Counter(o["op_name"] for o in ops)
    int8 = sum(1 for o in ops if o["op_name"] in _INT_LAYERS and len(o["inputs"]) and o["inputs"][0] in tensors
               and tensors[o["inputs"][0]]["dtype"] == np.int8)
    return dict(counts), int8


def _no_delegate_resolver() -> Any:
    from ai_edge_litert.interpreter import OpResolverType

    return OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def load_tflite(path: Path, threads: int | None) -> Any:
    """A ``.tflite`` file in an interpreter: the device runner's :class:`~quantbench.bundle_runner.TfliteModel`.

    One class for both, so a bundle's device check and this engine feed and read int8 tensors alike.
    """
    from quantbench.bundle_runner import TfliteModel

    return TfliteModel(path, threads, _interpreter)


RUN_BATCH = 32
"""Chunk size of :meth:`LiteRTSession.run` (one more conversion; evaluation speed is not measured there)."""


class LiteRTSession(Session):
    """``.tflite`` models (one per batch size) in LiteRT's interpreter with XNNPACK."""

    def __init__(self, convert: Callable[[int], Path], input_shape: tuple[int, int, int], threads: int | None,
                 variant: str) -> None:
        import ai_edge_litert

        self.convert = convert
        self.threads = threads
        self._bound: dict[int, Any] = {}
        path = convert(1)
        try:
            ops, int8 = tflite_op_counts(path)
        except Exception as exc:  # a file LiteRT cannot read
            raise QuantbenchError(f"LiteRT could not load {path}: {type(exc).__name__}: {exc}") from exc
        info = {
            "engine": "litert",
            "version": package_version("ai-edge-litert") or getattr(ai_edge_litert, "__version__", None),
            "provider": "CPU (XNNPACK delegate)",
            "precision": _PRECISION[variant],
            "ops": ops,
            "int8_layers": int8,
            "runner": "static batch (a file converted at the runner's batch size)",
            **file_info(path),
        }
        super().__init__(input_shape, info)
        self._bound[1] = load_tflite(path, threads)

    def _at(self, batch: int) -> Any:
        if batch not in self._bound:
            self._bound[batch] = load_tflite(self.convert(batch), self.threads)
        return self._bound[batch]

    def run(self, x: np.ndarray) -> np.ndarray:
        x = self.check_input(x)
        if len(x) == 1:
            return np.asarray(self._at(1)(x), dtype=np.float32)
        b = self._at(RUN_BATCH)
        out = []
        for i in range(0, len(x), RUN_BATCH):
            chunk = x[i:i + RUN_BATCH]
            n = len(chunk)
            if n < RUN_BATCH:
                chunk = np.concatenate([chunk, np.zeros((RUN_BATCH - n, *self.input_shape), np.float32)])
            out.append(b(chunk)[:n])
        return np.asarray(np.concatenate(out), dtype=np.float32)

    def runner(self, batch_size: int) -> Callable[[], object]:
        x = self.example_batch(batch_size)
        return self._at(int(batch_size)).timed(x)


@ENGINES.register("litert", description="LiteRT (TFLite) CPU with XNNPACK: fp32, dynamic range, int8 (our scales)")
class LiteRTEngine(Engine):
    """LiteRT's interpreter; models are converted from PyTorch by litert-torch."""

    name = "litert"
    variants = ("fp32", "int8", "dynamic")
    package = "ai_edge_litert"
    extra = "litert"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        ok, reason = super().available()
        if ok and importlib.util.find_spec("litert_torch") is None:
            return False, "the litert_torch package (the converter) is not installed (pip install 'quantbench[litert]')"
        return ok, reason

    def load(self, model: Deployable, variant: str, *, threads: int | None, workdir: Path) -> Session:
        from quantbench.engines.litert_export import export_tflite

        return LiteRTSession(lambda batch: export_tflite(model, variant, workdir, batch=batch), model.input_shape,
                             threads, variant)
