"""quantbench: measure what quantization does to a CNN - accuracy, size, compute, speed.

Public API only; importing this package imports no optional backend (onnxruntime,
openvino, ray, matplotlib are imported lazily where used).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
