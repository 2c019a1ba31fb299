"""PyTorch eager on the CPU: fp32, and bf16 where the CPU computes BF16 natively.

``fp32`` runs the float model as it is (a deep copy, eval mode, ``torch.inference_mode``).
``bf16`` runs a copy converted with ``.to(torch.bfloat16)`` (weights and activations bf16,
oneDNN kernels; logits returned as float32); it is offered only where the CPU has
AVX512_BF16 or AMX-BF16 and PyTorch's oneDNN reports BF16 support - emulated BF16 is slower
than fp32 and would only mislead. ``threads`` is applied around every call (and restored).

Eager PyTorch is a weak FP32 baseline for some models (e.g. its depthwise convolutions are
slow): report speed-ups against the best FP32 engine too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from quantbench.engines.base import (
    ENGINES,
    Deployable,
    Engine,
    Session,
    cpu_has_bf16,
    file_info,
    torch_threads,
)

__all__ = ["TorchEngine", "TorchSession"]


class TorchSession(Session):
    """An eager ``nn.Module`` at fp32 or bf16."""

    def __init__(
        self, module: torch.nn.Module, dtype: torch.dtype, input_shape: tuple[int, int, int],
        threads: int | None, path: Path, precision: str,
    ) -> None:  # fmt: skip
        self.module = module.eval()
        self.dtype = dtype
        self.threads = threads
        info = {
            "engine": "torch",
            "version": torch.__version__,
            "provider": f"cpu ({torch.backends.cpu.get_cpu_capability()})",
            "precision": precision,
            **file_info(path),
        }
        super().__init__(input_shape, info)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch_threads(self.threads), torch.inference_mode():
            out = self.module(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    def run(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(self.check_input(x)).to(self.dtype)
        return self._forward(t).float().numpy()

    def runner(self, batch_size: int) -> Callable[[], object]:
        x = torch.from_numpy(self.example_batch(batch_size)).to(self.dtype)
        return lambda: self._forward(x)


def bf16_supported() -> tuple[bool, str]:
    """Native BF16 in this CPU and in PyTorch's oneDNN, with the reason when not."""
    ok, reason = cpu_has_bf16()
    if not ok:
        return ok, reason
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    if not native:
        return False, "PyTorch's oneDNN does not report BF16 support on this CPU"
    return True, ""


@ENGINES.register("torch", description="PyTorch eager CPU: fp32, bf16 (native BF16 CPUs)")
class TorchEngine(Engine):
    """Eager PyTorch on the CPU."""

    name = "torch"
    variants = ("fp32", "bf16")
    package = "torch"

    @classmethod
    def supports(cls, variant: str) -> tuple[bool, str]:
        ok, reason = super().supports(variant)
        if ok and variant == "bf16":
            return bf16_supported()
        return ok, reason

    session_class: type[Session] = TorchSession

    def load(self, model: Deployable, variant: str, *, threads: int | None, workdir: Path) -> Session:
        module = copy.deepcopy(model.float_model).eval().cpu()
        dtype = torch.bfloat16 if variant == "bf16" else torch.float32
        module = module.to(dtype)
        path = Path(workdir) / f"{model.name}_{self.name}_{variant}.pt"
        torch.save(module.state_dict(), path)  # what this engine deploys: the weights at that precision
        precision = "bf16 weights and activations (module.to(bfloat16))" if variant == "bf16" else "fp32"
        return self.session_class(module, dtype, model.input_shape, threads, path, precision)
