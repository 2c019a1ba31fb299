"""quantbench.engines: deploy FP32 and quantized models on real inference engines.

Importing this package registers every engine in :data:`ENGINES`; no engine imports its heavy
package (onnxruntime, openvino) until it is used.

Example:
    >>> from quantbench.engines import ENGINES, Deployable, load_session
    >>> sorted(ENGINES.names())
    ['litert', 'onnxruntime', 'onnxruntime-cuda', 'openvino', 'torch', 'torch-compile', 'torch-cuda', 'torch-cuda-compile', 'torch-int8']
"""

from quantbench.engines import (  # noqa: F401
    litert_engine,
    onnxruntime_engine,
    openvino_engine,
    torch_compile_engine,
    torch_cuda_engine,
    torch_engine,
    torch_int8_engine,
)
from quantbench.engines.base import (
    ENGINES,
    VARIANTS,
    Deployable,
    Engine,
    Session,
    engine_status,
    evaluate_session,
    get_engine,
    load_session,
)

__all__ = [
    "ENGINES",
    "VARIANTS",
    "Deployable",
    "Engine",
    "Session",
    "engine_status",
    "evaluate_session",
    "get_engine",
    "load_session",
]
