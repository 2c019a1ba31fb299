"""PyTorch compiled with ``torch.compile`` (Inductor, weights frozen): fp32 and bf16 on the CPU.

Why a separate engine: eager PyTorch is a weak FP32 baseline (one kernel per op, BatchNorm not
folded, slow depthwise convolutions), and a speed-up of INT8 over eager FP32 overstates what
quantization buys against a good FP32 deployment. Inductor with ``freezing`` treats the weights
as constants, folds BatchNorm into the convolutions, fuses the element-wise tails and picks
oneDNN convolutions with pre-packed weights - the strongest FP32 that PyTorch itself offers.

Compilation is lazy and per input shape (``dynamic=False``: one specialised graph per batch
size, the fastest kernels for benchmarking). :meth:`TorchCompileSession.runner` compiles for its
batch size BEFORE returning the timed closure, so the compile time never enters a latency; it
is recorded in ``info["compile_s"]`` (seconds per batch size) instead. Inductor's on-disk cache
makes the second compile of the same graph much faster (seconds instead of tens of seconds on
this 2-core machine).

A compiled engine never times eager code under its name. TorchDynamo keeps one cache of compiled
graphs per Python function, shared by every compiled module of the process, and past its recompile
limit (8 by default) it silently runs the function eagerly: a ninth batch size or variant in one
``bench`` used to be eager PyTorch labelled ``torch-compile`` (seen on an H200 and reproduced on the
CPU). So :func:`compile_module` starts from an empty cache when none of its earlier modules is still
alive, raises the limit to :data:`RECOMPILE_LIMIT`, and the first call per batch size runs with
Dynamo's "fail on the limit" switch: hitting it is a one-line error, not a silent eager timing.

The GPU counterpart is ``torch-cuda-compile`` (:mod:`quantbench.engines.torch_cuda_engine`),
which uses :func:`compile_module` on the CUDA module.
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from quantbench.engines.base import ENGINES
from quantbench.engines.torch_engine import TorchEngine, TorchSession
from quantbench.errors import QuantbenchError

__all__ = ["RECOMPILE_LIMIT", "TorchCompileEngine", "TorchCompileSession", "compile_module", "compiler_available",
           "compiling_call"]

#: Graphs Dynamo may keep per function before refusing (its default, 8, is one ``bench`` of 4 batch
#: sizes x 2 variants); every compiled module shares the same wrapper function, hence the same count.
RECOMPILE_LIMIT = 64

_live: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def compile_module(module: torch.nn.Module) -> Any:
    """``torch.compile`` with Inductor, static shapes and frozen weights (an inference deployment).

    Dynamo's caches are emptied first when no module this function compiled is alive any more (the
    previous session is done), so a long ``bench``/``recommend``/sweep process never reaches the
    recompile limit; Inductor's on-disk cache keeps the recompiles cheap.
    """
    import torch._dynamo

    gc.collect()  # sessions dropped in reference cycles count as gone
    if not len(_live):
        torch._dynamo.reset()
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    compiled = torch.compile(module.eval(), backend="inductor", dynamic=False, options={"freezing": True})
    _live.add(compiled)
    return compiled


def compiler_available() -> tuple[bool, str]:
    """Inductor's CPU code generation needs a C++ compiler; ``(False, reason)`` without one."""
    import shutil

    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return False, "torch.compile (Inductor) needs a C++ compiler on PATH (g++, c++ or clang++); none found"
    return True, ""


def compiling_call(info: dict[str, Any], batch_size: int, call: Callable[[], Any],
                   sync: Callable[[], Any] | None = None) -> Any:
    """``call()``; the first call for a batch size compiles, so its seconds go to ``info["compile_s"]``.

    ``sync`` (e.g. ``torch.cuda.synchronize``) makes the recorded time include queued GPU work.
    """
    if batch_size in info["compile_s"]:
        return call()
    import torch._dynamo

    t = time.perf_counter()
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            out = call()
    except torch._dynamo.exc.FailOnRecompileLimitHit as exc:
        raise QuantbenchError(
            f"{info.get('engine', 'torch.compile')}: batch {batch_size} needs graph {RECOMPILE_LIMIT + 1} in this "
            f"process, past torch.compile's recompile limit; its timing would be eager PyTorch's, so it is refused "
            f"(fewer batch sizes or variants per process, or end the sessions you no longer use)") from exc
    if sync is not None:
        sync()
    info["compile_s"][batch_size] = round(time.perf_counter() - t, 3)
    return out


class TorchCompileSession(TorchSession):
    """The eager session with a compiled module: compiles once per batch size, before timing."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype, input_shape: tuple[int, int, int],
                 threads: int | None, path: Path, precision: str) -> None:
        super().__init__(compile_module(module), dtype, input_shape, threads, path, precision)
        self.info.update(engine="torch-compile", provider=self.info["provider"] + ", inductor, freezing",
                         compile_s={})

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return compiling_call(self.info, len(x), lambda: super(TorchCompileSession, self)._forward(x))

    def runner(self, batch_size: int) -> Callable[[], object]:
        run = super().runner(batch_size)
        run()  # compile now: compilation is not inference and must not be timed
        return run


@ENGINES.register("torch-compile", description="PyTorch torch.compile (Inductor, frozen weights) CPU: fp32, bf16")
class TorchCompileEngine(TorchEngine):
    """``torch.compile`` on the CPU: the eager engine's variants and deployment, compiled."""

    name = "torch-compile"
    session_class = TorchCompileSession

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return compiler_available()

    @classmethod
    def supports(cls, variant: str) -> tuple[bool, str]:
        ok, reason = cls.available()
        return super().supports(variant) if ok else (ok, reason)
