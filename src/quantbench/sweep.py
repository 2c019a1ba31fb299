"""Sweeps: one experiment file with a ``grid``/``cells`` -> many cells, each run once, resumable after any kill.

The file format is the one every experiment file has (:mod:`quantbench.experiments.files`): the
kind's keys at the top, plus ``grid`` (a cartesian product) and ``cells`` (explicit variants)::

    name: resnet20-ptq
    kind: ptq                      # any experiment kind: ptq, qat, mixed, split, bench, train, eval, ...
    model: resnet20
    data: imagefolder:../data/dev  # relative to the file
    calib_size: 500
    grid:
      method: [w8a8:mse, w4a8:adaround]
      hyper.alpha: [0.25, 0.5]
    cells:
      - {}
      - {first_last: int8}

Every cell runs through the experiment layer (:func:`quantbench.experiments.layer.run_in_cell`),
exactly as the verb would. Every cell gets an id: a hash of its kind and complete parameters. A
cell's rows, its run row and its "done" mark are written by the driver in ONE SQLite transaction
(:meth:`~quantbench.store.ResultStore.add_cell`), so a sweep killed at any moment - kill -9
included - holds each cell completely or not at all; running the same file again skips the
finished cells and runs the rest. Workers (in-process, a local process pool, or Ray) only compute
and return rows; the driver alone writes the store.

Example:
    >>> sweep = load_sweep("examples/sweep_digits_ptq.yaml")  # doctest: +SKIP
    >>> run_sweep(sweep, store_path="runs/quantbench.db", executor="pool", workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError

__all__ = ["Cell", "Sweep", "SweepOutcome", "expand", "load_sweep", "run_cell", "run_sweep", "sweep_folder"]


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its id and complete parameters."""

    cell_id: str
    params: dict[str, Any]

    def label(self, grid_keys: list[str]) -> str:
        return " ".join(f"{k}={self.params_flat().get(k)}" for k in grid_keys) or self.cell_id

    def params_flat(self) -> dict[str, Any]:
        flat = {k: v for k, v in self.params.items() if k != "hyper"}
        flat.update({f"hyper.{k}": v for k, v in (self.params.get("hyper") or {}).items()})
        return flat


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file."""

    name: str
    kind: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    out_dir: str = "runs/sweeps"
    source: str = ""
    variants: tuple[dict[str, Any], ...] = ({},)


@dataclass
class SweepOutcome:
    """What a sweep invocation did."""

    sweep_id: str
    cells: list[Cell]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


# ----------------------------------------------------------------------------- parsing


def load_sweep(path: str | Path, kind: str | None = None) -> Sweep:
    """Read and validate a sweep file; every cell's config is validated now (errors name the file and key)."""
    from quantbench.experiments.files import read_experiment_file
    from quantbench.experiments.layer import config_for

    f = read_experiment_file(path, kind)
    base = {k: v for k, v in f.values.items() if k not in ("name", "out")}
    sweep = Sweep(name=f.name, kind=f.kind, base=base, grid=f.grid, out_dir=str(f.values.get("out") or "runs/sweeps"),
                  source=str(path), variants=tuple(f.cells) or ({},))
    for cell in expand(sweep):
        try:
            config_for(sweep.kind, cell.params)
        except QuantbenchError as exc:
            raise QuantbenchError(f"{path}: cell {cell.label(list(sweep.grid)) or cell.cell_id}: {exc}") from None
    return sweep


def _cell_id(kind: str, params: dict[str, Any]) -> str:
    text = json.dumps({"kind": kind, **params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand(sweep: Sweep) -> list[Cell]:
    """The grid's cartesian product (in file order) crossed with ``cells``, each merged onto ``base``."""
    from quantbench.experiments.files import merge_cell

    keys = list(sweep.grid)
    cells = []
    seen: set[str] = set()
    for variant in sweep.variants:
        for combo in itertools.product(*(sweep.grid[k] for k in keys)) if keys else [()]:
            params = merge_cell(sweep.base, variant, dict(zip(keys, combo, strict=True)))
            cell = Cell(_cell_id(sweep.kind, params), params)
            if cell.cell_id not in seen:  # two variants that end up identical are one cell
                seen.add(cell.cell_id)
                cells.append(cell)
    return cells


def run_cell(kind: str, cell_id: str, params: dict[str, Any], out_root: str, threads: int | None = None
             ) -> dict[str, Any]:
    """Run one cell through the experiment layer; returns plain data (rows as dicts) for the driver to store.

    Never writes the store. Errors come back as ``{"error": ...}`` so one bad cell does not stop the sweep.
    """
    from quantbench.experiments.layer import config_for, run_in_cell
    from quantbench.measure.environment import environment

    out_dir = Path(out_root) / cell_id
    t0 = time.perf_counter()
    try:
        values = {"threads": threads, **params} if threads and "threads" not in params else dict(params)
        rows = run_in_cell(config_for(kind, values), out_dir)
    except QuantbenchError as exc:
        return {"cell_id": cell_id, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported per cell, the sweep goes on
        return {"cell_id": cell_id, "error": f"{type(exc).__name__}: {exc}"}
    return {"cell_id": cell_id, "rows": [r.as_dict() for r in rows], "environment": environment(),
            "seconds": time.perf_counter() - t0, "out_dir": str(out_dir)}


# ----------------------------------------------------------------------------- executors


def _inprocess(jobs: list[tuple[Any, ...]], workers: int) -> Iterator[dict[str, Any]]:
    for job in jobs:
        yield run_cell(*job)


def _exit_with_parent(parent: int) -> None:
    """Pool-worker initializer: a thread that ends the worker when the driver is gone (kill -9 included)."""
    import os
    import threading

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="quantbench-parent-watch").start()


def _pool(jobs: list[tuple[Any, ...]], workers: int) -> Iterator[dict[str, Any]]:
    import os

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(run_cell, *job) for job in jobs]
        for fut in as_completed(futures):
            yield fut.result()


def _ray(jobs: list[tuple[Any, ...]], workers: int, address: str | None) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise QuantbenchError("executor 'ray' needs Ray: pip install 'quantbench[ray]'") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = max(1, workers)
        ray.init(**kwargs)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(run_cell)
        pending = [remote.remote(*job) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


def sweep_folder(sweep: Sweep) -> Path:
    """The folder of a sweep's cells and report: its ``out`` folder / its name as one safe component."""
    from quantbench.paths import safe_component

    return Path(sweep.out_dir) / safe_component(sweep.name)


def run_sweep(sweep: Sweep, *, store_path: str, executor: str = "inprocess", workers: int = 1,
              progress: bool = True, threads: int | None = None,
              log: Callable[[str], None] | None = None) -> SweepOutcome:
    """Run every cell not yet finished in the store; store each as it finishes (driver only).

    Args:
        executor: ``inprocess``, ``pool`` (``workers`` local processes), ``ray`` (a local Ray
            instance), ``ray://HOST:PORT`` (a cluster) or ``ray:auto``.
        threads: intra-op threads per cell (default: cores / workers).
    """
    import os

    from quantbench.store import Result, ResultStore

    log = log or (lambda m: print(m, file=sys.stderr))
    if workers < 1:
        raise QuantbenchError(f"sweep: --workers must be >= 1, got {workers}")
    cells = expand(sweep)
    t0 = time.perf_counter()
    outcome = SweepOutcome(sweep.name, cells)
    with ResultStore(store_path) as store:
        done = store.sweep_cells(sweep.name)
        todo = [c for c in cells if c.cell_id not in done]
        outcome.skipped = [c.cell_id for c in cells if c.cell_id in done]
        if outcome.skipped:
            log(f"sweep {sweep.name}: {len(outcome.skipped)} of {len(cells)} cells already finished; "
                f"running the other {len(todo)}")
        threads = threads or max(1, (os.cpu_count() or 1) // max(workers, 1))
        out_root = str(sweep_folder(sweep))
        jobs = [(sweep.kind, c.cell_id, c.params, out_root, threads) for c in todo]
        by_id = {c.cell_id: c for c in todo}
        if executor == "inprocess":
            stream = _inprocess(jobs, workers)
        elif executor == "pool":
            stream = _pool(jobs, workers)
        elif executor == "ray":
            stream = _ray(jobs, workers, None)  # a local Ray instance
        elif executor.startswith("ray://"):
            stream = _ray(jobs, workers, executor)  # a cluster's client address
        elif executor.startswith("ray:"):
            stream = _ray(jobs, workers, executor[4:])  # e.g. ray:auto (the cluster this machine is in)
        else:
            raise QuantbenchError(f"sweep: executor {executor!r} unknown; expected inprocess, pool, ray or ray://ADDRESS")
        bar = None
        if progress and todo:
            from quantbench.progress import bar as progress_bar

            bar = progress_bar(total=len(todo), desc=f"sweep {sweep.name}", unit="cell")
        keys = list(sweep.grid)
        try:
            for res in stream:
                cell = by_id[res["cell_id"]]
                if "error" in res:
                    outcome.failed[cell.cell_id] = res["error"]
                    log(f"sweep: cell {cell.label(keys)} failed: {res['error']}")
                else:
                    rows = [Result(**r) for r in res["rows"]]
                    store.add_cell(sweep.name, cell.cell_id, cell.params, kind=f"sweep-{sweep.kind}",
                                   config={"sweep": sweep.name, "kind": sweep.kind, "cell": cell.params,
                                           "source": sweep.source, "seconds": res.get("seconds"),
                                           "model": cell.params.get("model"), "data": cell.params.get("data")},
                                   environment=res["environment"], results=rows, name=cell.label(keys),
                                   out_dir=res.get("out_dir"))
                    outcome.ran.append(cell.cell_id)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    outcome.wall_s = time.perf_counter() - t0
    return outcome
