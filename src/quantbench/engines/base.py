"""Inference engines: one protocol, a registry, and the checks every engine shares.

An *engine* is a runtime that executes a model for real (PyTorch eager, PyTorch's quantized
kernels, ONNX Runtime, OpenVINO); a *variant* is the precision it runs it at:

* ``"fp32"`` - the float model;
* ``"bf16"`` - bfloat16 compute (only where the CPU has native BF16: AVX512_BF16 or AMX);
* ``"int8"`` - static INT8 with OUR calibrated scales (the :class:`QuantizedModel` is deployed,
  not re-quantized by the engine), so the engine's accuracy is the simulated accuracy;
* ``"dynamic"`` - weights INT8 offline, activations quantized per batch at run time, by the
  engine's own scheme (ONNX Runtime's ``quantize_dynamic``);
* ``"fp16"``, ``"tf32"`` - GPU precisions (``torch-cuda``; TF32: float32 storage, 10-bit mantissa
  matmul/convolution on tensor cores).

Engine classes are registered in :data:`ENGINES` (tests parametrize over ``ENGINES.names()``)
and import their heavy package lazily, inside methods, so ``import quantbench`` never needs
them. :func:`load_session` is the one entry point: it turns every user mistake (unknown
engine, package missing, unsupported variant, no quantized model) into a one-line
:class:`QuantbenchError`. A :class:`Session` runs numpy batches (``run``), hands
:func:`~quantbench.measure.latency.measure_latency` a zero-argument closure on a prepared
batch (``runner``), and describes what was deployed (``info``).

Example:
    >>> dep = Deployable(model, qm, (3, 32, 32), name="resnet20")  # doctest: +SKIP
    >>> sess = load_session("onnxruntime", dep, "int8", threads=2)  # doctest: +SKIP
    >>> logits = sess.run(images)  # doctest: +SKIP
    >>> measure_latency(sess.runner(32), batch_size=32, threads=2)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.registry import Registry

__all__ = [
    "ENGINES",
    "VARIANTS",
    "Deployable",
    "Engine",
    "Session",
    "SessionModule",
    "cpu_flags",
    "engine_status",
    "evaluate_session",
    "get_engine",
    "load_session",
]

VARIANTS = ("fp32", "bf16", "int8", "dynamic", "fp16", "tf32")
"""Every precision an engine may offer (see the module docstring)."""

ENGINES: Registry[type[Engine]] = Registry("engine")
"""Engine name -> engine class."""


@dataclass
class Deployable:
    """What an engine needs to deploy one model.

    Attributes:
        float_model: The FP32 ``nn.Module`` (fp32/bf16/dynamic variants start from it).
        quantized: The prepared, calibrated :class:`~quantbench.quant.prepare.QuantizedModel`
            whose scales the ``int8`` variant deploys (None: no ``int8``).
        input_shape: ``(C, H, W)`` of one input image.
        name: A label used for file names and reports.
    """

    float_model: nn.Module
    quantized: Any
    input_shape: tuple[int, int, int]
    name: str = "model"

    def __post_init__(self) -> None:
        shape = tuple(self.input_shape)
        if len(shape) != 3 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
        ):
            raise QuantbenchError(f"deployable {self.name!r}: input_shape must be (C, H, W) positive integers, "
                                  f"got {self.input_shape!r}")  # fmt: skip
        self.input_shape = shape  # type: ignore[assignment]
        if not isinstance(self.float_model, nn.Module):
            raise QuantbenchError(f"deployable {self.name!r}: float_model must be an nn.Module, "
                                  f"got {type(self.float_model).__name__}")  # fmt: skip
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(self.name))
        self.name = safe or "model"


class Session(ABC):
    """A model loaded in an engine at one variant.

    Attributes:
        info: Engine, package version, provider/device, precision, ``model_path`` of the
            deployed file and ``model_bytes`` (its size on disk), thread setting.
        input_shape: ``(C, H, W)`` it accepts.
    """

    info: dict[str, Any]
    input_shape: tuple[int, int, int]

    def __init__(self, input_shape: tuple[int, int, int], info: dict[str, Any]) -> None:
        self.input_shape = tuple(input_shape)  # type: ignore[assignment]
        self.info = info
        self._keep: list[Any] = []  # objects whose lifetime is the session's (temporary folders)

    def check_input(self, x: Any) -> np.ndarray:
        """``x`` as a C-contiguous float32 ``(N, C, H, W)`` array, N >= 1, or a QuantbenchError."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray):
            raise QuantbenchError(f"{self.info.get('engine', 'engine')}: input must be a numpy array or a "
                                  f"tensor, got {type(x).__name__}")  # fmt: skip
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape or x.shape[0] < 1:
            raise QuantbenchError(
                f"{self.info.get('engine', 'engine')}: input of shape {tuple(x.shape)}; expected "
                f"(N, {', '.join(map(str, self.input_shape))}) with N >= 1"
            )
        return np.ascontiguousarray(x, dtype=np.float32)

    def example_batch(self, batch_size: int) -> np.ndarray:
        """A seeded random float32 batch of ``batch_size`` images (for ``runner``)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise QuantbenchError(f"{self.info.get('engine', 'engine')}: batch_size must be an integer >= 1, "
                                  f"got {batch_size!r}")  # fmt: skip
        rng = np.random.default_rng(0)
        return rng.standard_normal((int(batch_size), *self.input_shape), dtype=np.float32)

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits (float32, ``(N, classes)``) of a batch ``x`` of shape ``(N, C, H, W)``."""

    @abstractmethod
    def runner(self, batch_size: int) -> Callable[[], object]:
        """A zero-argument closure running ONE inference on a prepared random batch.

        Everything that is not inference (input preparation, conversions) is done before, so
        :func:`~quantbench.measure.latency.measure_latency` times only the engine.
        """


class Engine(ABC):
    """An inference runtime. Subclasses set ``name``, ``variants``, ``package``, ``extra``.

    ``available()`` and ``supports()`` are cheap checks (no model is built); ``load()``
    deploys a :class:`Deployable` and returns a :class:`Session`. Use :func:`load_session`,
    which validates everything first.
    """

    name: ClassVar[str]
    variants: ClassVar[tuple[str, ...]]
    package: ClassVar[str] = ""  # import name whose presence makes the engine available
    extra: ClassVar[str] = ""  # pip extra that installs it

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """``(True, "")`` or ``(False, reason)``, e.g. the package to install."""
        if cls.package and importlib.util.find_spec(cls.package) is None:
            hint = f"pip install 'quantbench[{cls.extra}]'" if cls.extra else f"pip install {cls.package}"
            return False, f"the {cls.package} package is not installed ({hint})"
        return True, ""

    @classmethod
    def supports(cls, variant: str) -> tuple[bool, str]:
        """``(True, "")`` or ``(False, reason)`` for ``variant`` on this machine."""
        if variant not in cls.variants:
            return (
                False,
                f"engine {cls.name!r} has no variant {variant!r}; it offers: {', '.join(cls.variants)}",
            )
        return True, ""

    @abstractmethod
    def load(self, model: Deployable, variant: str, *, threads: int | None, workdir: Path) -> Session:
        """Deploy ``model`` at ``variant``; files go to ``workdir``."""


# ----------------------------------------------------------------------------- helpers


CPUINFO_ENV = "QUANTBENCH_CPUINFO"


def cpu_flags() -> set[str]:
    """CPU feature flags that quantbench's choices follow: /proc/cpuinfo's, or another machine's.

    ``QUANTBENCH_CPUINFO=FILE`` reads another machine's cpuinfo instead, to see what quantbench
    would choose there (e.g. ``--weight-range auto`` for an AVX2-only server) - and to test it.
    What the kernels running HERE do is :func:`real_cpu_flags`.
    """
    return real_cpu_flags(os.environ.get(CPUINFO_ENV) or "/proc/cpuinfo")


def real_cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """Feature flags of this machine's CPU (empty where unavailable, e.g. not Linux)."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


SATURATION_SAFE_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_saturates(flags: set[str] | None = None, machine: str | None = None) -> tuple[bool, str]:
    """Whether this CPU's u8 x s8 integer kernels can saturate with full-range 8-bit weights, and why.

    x86 CPUs without VNNI (``avx512_vnni``, ``avx_vnni``) or AMX multiply u8 activations by s8
    weights with ``vpmaddubsw``, which adds two products in int16: ``2 x 255 x 128`` overflows it.
    ONNX Runtime, OpenVINO (oneDNN) and PyTorch's fbgemm all use it there. Arm and VNNI/AMX x86
    accumulate in int32 and do not saturate. ``flags``/``machine`` default to this machine's.

    Example:
        >>> int8_saturates({"avx2", "fma"}, "x86_64")[0]
        True
        >>> int8_saturates({"avx2", "avx512_vnni"}, "x86_64")[0]
        False
    """
    import platform

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return False, f"{machine} CPU: integer kernels accumulate in int32 (no vpmaddubsw)"
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return False, "cannot read CPU flags; assuming VNNI-class int8 kernels"
    found = sorted(flags & SATURATION_SAFE_FLAGS)
    if found:
        return False, f"x86 CPU with {'/'.join(found)}: u8 x s8 products accumulate in int32"
    return True, "x86 CPU without VNNI/AMX: u8 x s8 kernels (vpmaddubsw) saturate in int16"


def cpu_has_bf16() -> tuple[bool, str]:
    """Native BF16 compute on this CPU (AVX512_BF16 or AMX-BF16), with the reason when not."""
    flags = real_cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"}:
        return True, ""
    if not flags:
        return False, "cannot read CPU flags (/proc/cpuinfo) to confirm native BF16 support"
    return False, "this CPU has no native BF16 instructions (avx512_bf16 or amx_bf16)"


def check_threads(threads: int | None) -> int | None:
    """``threads`` validated (None or an integer >= 1)."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise QuantbenchError(f"threads must be an integer >= 1 or None, got {threads!r}")
    return int(threads)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with torch's intra-op threads set to ``threads`` (restored afterwards)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def file_info(path: Path) -> dict[str, Any]:
    """``model_path`` and ``model_bytes`` (a folder counts all its files)."""
    path = Path(path)
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    else:
        size = path.stat().st_size
    return {"model_path": str(path), "model_bytes": int(size)}


# ----------------------------------------------------------------------------- entry points


def get_engine(name: str) -> Engine:
    """An instance of the engine registered as ``name`` (unknown names list the known ones)."""
    _register_builtin()
    return ENGINES.get(name)()


def load_session(
    engine: str,
    model: Deployable,
    variant: str,
    *,
    threads: int | None = None,
    workdir: str | Path | None = None,
) -> Session:
    """Deploy ``model`` in ``engine`` at ``variant``.

    Args:
        engine: A name in :data:`ENGINES` (``quantbench engines`` lists them).
        model: What to deploy.
        variant: One of the engine's ``variants``.
        threads: Intra-op threads of the engine (None: the engine's default).
        workdir: Folder for the deployed files (None: a temporary folder that lives as long
            as the session).

    Returns:
        A :class:`Session`.

    Raises:
        QuantbenchError: Unknown engine (listing the known ones), engine not installed or
            variant unsupported here (with the reason), ``int8`` without a quantized model,
            or bad ``threads``.

    Example:
        >>> sess = load_session("onnxruntime", Deployable(model, None, (3, 32, 32)), "fp32")  # doctest: +SKIP
    """
    eng = get_engine(engine)
    ok, reason = eng.available()
    if not ok:
        raise QuantbenchError(f"engine {engine!r} is not available: {reason}")
    if variant not in eng.variants:
        raise QuantbenchError(
            f"engine {engine!r} has no variant {variant!r}; it offers: {', '.join(eng.variants)}"
        )
    ok, reason = eng.supports(variant)
    if not ok:
        raise QuantbenchError(f"engine {engine!r} cannot run variant {variant!r} here: {reason}")
    if not isinstance(model, Deployable):
        raise QuantbenchError(f"load_session needs a Deployable, got {type(model).__name__}")
    if variant == "int8" and model.quantized is None:
        raise QuantbenchError(
            f"engine {engine!r} variant 'int8' deploys our calibrated scales: quantize the model first "
            "(a Deployable with quantized=QuantizedModel)"
        )
    threads = check_threads(threads)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix=f"quantbench-{engine}-")
        workdir = tmp.name
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    session = eng.load(model, variant, threads=threads, workdir=workdir)
    if tmp is not None:
        session._keep.append(tmp)
    session.info.setdefault("engine", eng.name)
    session.info.setdefault("variant", variant)
    session.info.setdefault("threads", threads)
    return session


def engine_status() -> list[dict[str, Any]]:
    """One row per engine: name, available, reason, variants, and the reason per unsupported variant.

    Example:
        >>> [row["name"] for row in engine_status()]  # doctest: +SKIP
        ['onnxruntime', 'openvino', 'torch', 'torch-int8']
    """
    _register_builtin()
    rows = []
    for name in ENGINES.names():
        cls = ENGINES.get(name)
        ok, reason = cls.available()
        unsupported = {}
        if ok:
            for v in cls.variants:
                vok, vreason = cls.supports(v)
                if not vok:
                    unsupported[v] = vreason
        rows.append({"name": name, "available": ok, "reason": reason, "variants": list(cls.variants),
                     "unsupported": unsupported})  # fmt: skip
    return rows


class SessionModule(nn.Module):
    """Adapts a Session to the ``nn.Module`` interface :func:`evaluate` expects."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.session.run(x.numpy()), dtype=np.float32))


def evaluate_session(session: Session, data: Any, **kwargs: Any) -> Any:
    """Accuracy of a deployed model: :func:`quantbench.measure.accuracy.evaluate` through ``session``.

    Same data forms, options (``topk``, ``batch_size``, ``keep_logits``, ``progress``) and
    :class:`~quantbench.measure.accuracy.EvalResult` (Wilson intervals, per-image hits for
    paired comparisons) as for a torch model.

    Example:
        >>> r = evaluate_session(sess, parts["test"])  # doctest: +SKIP
        >>> paired_difference(simulated.correct, r.correct)  # doctest: +SKIP
    """
    from quantbench.measure.accuracy import evaluate

    return evaluate(SessionModule(session), data, **kwargs)


_BUILTIN = ("litert", "onnxruntime", "openvino", "torch", "torch_int8", "torch_cuda", "torch_compile")


def _register_builtin() -> None:
    """Import the engine modules (they register themselves; their heavy packages stay unimported)."""
    import importlib

    for mod in _BUILTIN:
        importlib.import_module(f"quantbench.engines.{mod}_engine")
