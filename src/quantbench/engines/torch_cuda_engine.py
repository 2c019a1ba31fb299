"""PyTorch eager on an NVIDIA GPU: fp32 (TF32 off), tf32, fp16 and bf16 - where CUDA is available.

Timing on a GPU: kernels are asynchronous, so the runner records CUDA events around the forward
pass and synchronizes on the end event before returning; ``measure_latency`` then times a call
that has really finished, and the GPU-side time of every call (``start.elapsed_time(end)``) is
kept in ``session.event_ms`` (what the bench records as ``cuda_event_median_ms``). Inputs are
copied to the GPU once, outside the timed call (host-to-device copies are a deployment choice,
not model compute). ``fp32`` disables TF32 explicitly (PyTorch enables it for cuDNN convolutions
by default), ``tf32`` enables it for matmul and convolutions. On a CPU-only machine the engine is
listed as unavailable with the reason.

``torch-cuda-compile`` is the same at every precision with the module compiled by
:func:`~quantbench.engines.torch_compile_engine.compile_module` (Inductor, static shapes, frozen
weights): the runner compiles for its batch size before it is timed, and the compile time is
kept in ``info["compile_s"]``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantbench.engines.base import ENGINES, Deployable, Engine, Session, file_info

__all__ = ["TorchCudaCompileEngine", "TorchCudaEngine", "TorchCudaSession"]

_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


class TorchCudaSession(Session):
    """An eager module on ``cuda:0`` at one precision."""

    def __init__(self, module: torch.nn.Module, variant: str, input_shape: tuple[int, int, int], path: Path,
                 compiled: bool = False) -> None:
        from quantbench.engines.torch_compile_engine import compile_module

        self.module = compile_module(module) if compiled else module.eval()
        self.compiled = compiled
        self.variant = variant
        self.dtype = _DTYPES[variant]
        self.device = torch.device("cuda", 0)
        self.event_ms: list[float] = []
        info = {"engine": "torch-cuda-compile" if compiled else "torch-cuda", "version": torch.__version__,
                "provider": torch.cuda.get_device_name(0) + (", inductor, freezing" if compiled else ""),
                "precision": variant + (" (TF32 off)" if variant == "fp32" else ""),
                "cuda": torch.version.cuda, **file_info(path)}
        if compiled:
            info["compile_s"] = {}
        super().__init__(input_shape, info)

    def _call(self, x: torch.Tensor) -> Any:
        with _tf32(self.variant == "tf32"), torch.inference_mode():
            return self.module(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            from quantbench.engines.torch_compile_engine import compiling_call

            out = compiling_call(self.info, len(x), lambda: self._call(x), torch.cuda.synchronize)
        else:
            out = self._call(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    def run(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(self.check_input(x)).to(self.device, self.dtype)
        out = self._forward(t).float().cpu().numpy()
        torch.cuda.synchronize()
        return out

    def runner(self, batch_size: int) -> Callable[[], object]:
        x = torch.from_numpy(self.example_batch(batch_size)).to(self.device, self.dtype)
        if self.compiled:
            self._forward(x)  # compile for this batch size before anything is timed
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.event_ms = []

        def run() -> object:
            start.record()
            out = self._forward(x)
            end.record()
            end.synchronize()
            self.event_ms.append(float(start.elapsed_time(end)))
            return out

        return run


@ENGINES.register("torch-cuda", description="PyTorch eager on an NVIDIA GPU: fp32, tf32, fp16, bf16 (CUDA events)")
class TorchCudaEngine(Engine):
    """Eager PyTorch on the first CUDA device."""

    name = "torch-cuda"
    variants = ("fp32", "tf32", "fp16", "bf16")
    package = "torch"
    compiled = False

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
            return False, f"CUDA is not available (torch {torch.__version__}, {build}, no GPU visible)"
        return True, ""

    @classmethod
    def supports(cls, variant: str) -> tuple[bool, str]:
        ok, reason = super().supports(variant)
        if not ok:
            return ok, reason
        ok, reason = cls.available()
        if not ok:
            return ok, reason
        if variant == "bf16" and not torch.cuda.is_bf16_supported():
            return False, f"{torch.cuda.get_device_name(0)} has no native BF16"
        if variant == "tf32" and torch.cuda.get_device_capability(0) < (8, 0):
            return False, f"{torch.cuda.get_device_name(0)} has no TF32 (needs compute capability >= 8.0)"
        return True, ""

    def load(self, model: Deployable, variant: str, *, threads: int | None, workdir: Path) -> Session:
        module = copy.deepcopy(model.float_model).eval().to(torch.device("cuda", 0), _DTYPES[variant])
        path = Path(workdir) / f"{model.name}_{self.name}_{variant}.pt"
        torch.save({k: v.cpu() for k, v in module.state_dict().items()}, path)
        return TorchCudaSession(module, variant, model.input_shape, path, compiled=self.compiled)


@ENGINES.register("torch-cuda-compile",
                  description="PyTorch torch.compile (Inductor, frozen weights) on an NVIDIA GPU: fp32, tf32, fp16, bf16")
class TorchCudaCompileEngine(TorchCudaEngine):
    """``torch.compile`` on the first CUDA device (same precisions and CUDA-event timing as torch-cuda)."""

    name = "torch-cuda-compile"
    compiled = True
