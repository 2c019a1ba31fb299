"""Run one call in a fresh worker process that starts in a fraction of a second.

Why: ``bench`` and ``recommend`` time each engine in a process of its own, so that no engine's idle
thread pool, allocator or JIT state from an earlier job skews the next one (an OpenVINO FP32 median
doubled beside ONNX Runtime's spinning threads in one process). ``spawn`` gives such a process but
pays Python's start-up and torch's import for every job: 2.6-3.1 s on a 2-core AMD EPYC (measured
while a benchmark shared the machine), more than timing a small model takes. A fork server that has
imported torch once (and no engine; torch's and numpy's thread pools start on first use) forks each
worker from that state in about 50 ms (same machine, same sharing). The worker holds nothing of the
caller's.

A fork server keeps the working directory and environment of the moment it started, while a
spawned worker takes the caller's current ones; the call therefore carries the caller's working
directory and environment at submit time and the worker adopts them before running, so relative
paths and settings mean what they would under ``spawn``. One difference stays: a setting a native
library reads once when it loads (OpenMP's ``OMP_*``, loaded with torch in the server) keeps its value
from when the server started, so callers pass thread counts explicitly, not through the environment.
Where fork servers do not exist (Windows) the worker is spawned.

Example:
    >>> from quantbench.fresh_process import run_in_fresh_process
    >>> import os
    >>> run_in_fresh_process(os.getpid) != os.getpid()
    True
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_in_fresh_process"]

T = TypeVar("T")

# Imported once by the fork server: what every worker would import first anyway.
PRELOAD = ("torch", "quantbench.experiments.bench")


def _context() -> Any:
    """The fork-server context with ``PRELOAD`` set (spawn where the platform has no fork server)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))  # takes effect when the server starts (first use)
    return ctx


def _as_caller(cwd: str, env: dict[str, str], fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    """Worker side: take the caller's directory and environment, then run ``fn(*args)``."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    return fn(*args)


def run_in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a new process (its result returned, its exceptions raised here).

    ``fn`` and ``args`` must pickle (``fn`` a module-level function). A worker that dies (killed for
    memory, a crash in native code) raises :class:`concurrent.futures.process.BrokenProcessPool`.

    Example:
        >>> run_in_fresh_process(divmod, 7, 2)
        (3, 1)
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
        return pool.submit(_as_caller, os.getcwd(), dict(os.environ), fn, args).result()
