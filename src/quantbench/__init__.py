"""quantbench: measure what quantization does to a CNN - accuracy, size, compute, speed.

The public API (:mod:`quantbench.api`) is importable from here and loaded lazily: ``import quantbench``
imports neither torch nor any optional backend (onnxruntime, openvino, ray, matplotlib) until a
function is called.

Example:
    >>> import quantbench as qb
    >>> sorted(qb.__all__)[:4]
    ['MixedPrecision', 'QuantbenchError', '__version__', 'bench']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quantbench.errors import QuantbenchError

__version__ = "0.1.0"

_API = ("MixedPrecision", "bench", "compare", "debug", "evaluate", "export", "lint", "load_model", "quantize",
        "recommend", "run", "split")

__all__ = ["QuantbenchError", "__version__", *_API]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; at run time these load on first use
    from quantbench.api import (  # noqa: F401
        MixedPrecision,
        bench,
        compare,
        debug,
        evaluate,
        export,
        lint,
        load_model,
        quantize,
        recommend,
        run,
        split,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        from quantbench import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
