"""Sweeps: one YAML grid -> many cells, each run once, stored as it finishes, resumable after any kill.

A sweep file::

    name: resnet20-ptq            # the sweep id in the store (default: the file name)
    kind: ptq                     # what one cell runs: ptq | qat | bench | train
    base:                         # parameters shared by every cell
      model: resnet20
      data: imagefolder:../shared/datasets/cifar10-jpeg/dev
      normalize: imagenet
      calib_size: 500
    grid:                         # the cartesian product of these lists
      scheme: [w8a8, w4a8]
      algo: [minmax, mse, adaround]
      hyper.alpha: [0.25, 0.5]    # dotted keys set model hyper-parameters
    cells:                        # optional: explicit variants, crossed with the grid
      - {}
      - {first_last: int8}

``topk: 3`` sets the top-k reported beside top-1 (default 5); ptq and qat cells that train also
report ``train_top1``/``train_topk`` on a fixed part of their training split.
``latency_batches: [1, 8, 32]`` in a ptq, qat or train cell also times the FP32 model (eager
PyTorch) and each quantized model deployed with its own scales on ``torch-int8`` at those batch
sizes (``threads`` sets the thread count), so accuracy, size and speed land in one report. Cells
that differ in anything a row does not show (``hyper.*``, ``lr``, ...) are labelled with it in the
report, so they never overwrite each other.

Every cell gets an id: a hash of its kind and complete parameters. A cell's rows, its run row and
its "done" mark are written by the driver in ONE SQLite transaction
(:meth:`~quantbench.store.ResultStore.add_cell`), so a sweep killed at any moment - kill -9
included - holds each cell completely or not at all; running the same file again skips the
finished cells and runs the rest. Workers (in-process, a local process pool, or Ray) only
compute and return rows; the driver alone writes the store.

Example:
    >>> sweep = load_sweep("examples/sweep_ptq.yaml")  # doctest: +SKIP
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

__all__ = ["CELL_KINDS", "Cell", "Sweep", "SweepOutcome", "expand", "load_sweep", "run_cell", "run_sweep"]

CELL_KINDS = ("ptq", "qat", "bench", "train")
_TOP_KEYS = {"name", "kind", "base", "grid", "cells", "out_dir"}


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


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file (errors name the file and the key)."""
    from quantbench.config import read_yaml_mapping

    p = Path(path)
    doc = read_yaml_mapping(p, "sweep file")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise QuantbenchError(f"{path}: unknown key {unknown[0]!r}; expected: {', '.join(sorted(_TOP_KEYS))}")
    kind = doc.get("kind", "ptq")
    if kind not in CELL_KINDS:
        raise QuantbenchError(f"{path}: kind {kind!r} unknown; expected one of: {', '.join(CELL_KINDS)}")
    base = doc.get("base") or {}
    grid = doc.get("grid") or {}
    if not isinstance(base, dict):
        raise QuantbenchError(f"{path}: 'base' must be a mapping of parameters")
    if not isinstance(grid, dict):
        raise QuantbenchError(f"{path}: 'grid' must be a mapping of parameter -> list of values")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise QuantbenchError(f"{path}: grid.{k} must be a non-empty list, got {v!r}")
    variants = doc.get("cells") or [{}]
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise QuantbenchError(f"{path}: 'cells' must be a list of parameter mappings")
    allowed = _CELL_PARAMS[kind]
    for k in [*base, *grid, *(key for v in variants for key in v)]:
        key = str(k)
        if key.startswith("hyper.") or key == "hyper":
            continue
        if key not in allowed:
            raise QuantbenchError(f"{path}: parameter {key!r} is not used by {kind} cells; "
                                  f"expected: {', '.join(sorted(allowed))} or hyper.NAME")  # fmt: skip
    name = str(doc.get("name") or p.stem)
    sweep = Sweep(name=name, kind=kind, base=dict(base), grid={str(k): list(v) for k, v in grid.items()},
                  out_dir=str(doc.get("out_dir") or "runs/sweeps"), source=str(p),
                  variants=tuple(dict(v) for v in variants))
    cells = expand(sweep)
    if "model" not in cells[0].params:
        raise QuantbenchError(f"{path}: every cell needs a 'model' (in base or grid)")
    return sweep


def _cell_id(kind: str, params: dict[str, Any]) -> str:
    text = json.dumps({"kind": kind, **params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand(sweep: Sweep) -> list[Cell]:
    """The grid's cartesian product (in file order) crossed with ``cells``, each merged onto ``base``."""
    keys = list(sweep.grid)
    cells = []
    seen: set[str] = set()
    for variant in sweep.variants:
        for combo in itertools.product(*(sweep.grid[k] for k in keys)) if keys else [()]:
            merged = {**sweep.base, **variant, **dict(zip(keys, combo, strict=True))}
            params = {k: v for k, v in merged.items() if not str(k).startswith("hyper.")}
            hyper = dict(params.pop("hyper", None) or {})
            hyper.update({str(k)[6:]: v for k, v in merged.items() if str(k).startswith("hyper.")})
            if hyper:
                params["hyper"] = hyper
            cell = Cell(_cell_id(sweep.kind, params), params)
            if cell.cell_id not in seen:  # two variants that end up identical are one cell
                seen.add(cell.cell_id)
                cells.append(cell)
    return cells


# ----------------------------------------------------------------------------- one cell (runs in a worker)

_COMMON = {"model", "checkpoint", "data", "normalize", "resize", "seed", "hyper", "num_classes", "latency_batches",
           "threads", "topk"}
_CELL_PARAMS: dict[str, set[str]] = {
    "ptq": _COMMON | {"calib_size", "scheme", "algo", "per_channel", "first_last", "companding", "adaround_iters",
                      "epochs", "lr", "eval_size"},
    "qat": _COMMON | {"calib_size", "scheme", "init", "epochs", "lr", "act_grad", "first_last", "bn_freeze_epoch",
                      "train_fraction", "pretrain_epochs", "plan", "fp32_finetune"},
    "train": _COMMON | {"epochs", "lr", "batch_size"},
    "bench": {"model", "checkpoint", "engines", "variants", "batch_sizes", "input_size", "threads", "hyper",
              "num_classes", "min_time_s", "min_iters", "warmup", "calib_size"},
}


def _data_and_model(p: dict[str, Any], roles: dict[str, float]) -> tuple[Any, Any, Any]:
    from quantbench import config as C
    from quantbench.data import open_dataset, split_dataset
    from quantbench.experiments.runner import prepare_model

    ds = open_dataset(p.get("data", "digits"), normalize=p.get("normalize", "auto"), resize=p.get("resize"))
    parts = split_dataset(ds, roles, seed=int(p.get("seed", 0)))
    model = prepare_model(C.ModelConfig(name=p["model"], checkpoint=p.get("checkpoint"),
                                        hyper=dict(p.get("hyper") or {}), num_classes=p.get("num_classes")),
                          ds.input_shape, ds.num_classes)
    return ds, parts, model


def _pretrain(model: Any, train: Any, p: dict[str, Any], out_dir: Path, roles: dict[str, float],
              epochs_key: str = "epochs") -> Any:
    """Train the FP32 model of a cell from scratch - once per sweep for identical training settings.

    Cells that differ only in what happens AFTER training (scheme, algorithm, calibration size,
    latency batches ...) share one trained model: the first cell saves its weights and history to
    ``<out_root>/_pretrained/<key>.pt`` (atomically), later ones load them (``weights_only``). The key
    hashes everything that shapes the training: model, hyper-parameters, checkpoint (path, size,
    mtime), data spec and preprocessing, split roles, seed, epochs, learning rate, batch size and the
    quantbench version. The stored history is the original run's, training time included. The torch
    RNG is reseeded afterwards, so what follows does not depend on whether training ran here.
    """
    import os

    import torch

    from quantbench import __version__
    from quantbench.config import TrainConfig
    from quantbench.train import fit
    from quantbench.train.loop import History

    epochs = int(p.get(epochs_key, 0) or 0)
    if epochs <= 0:
        return None
    cfg = TrainConfig(epochs=epochs, lr=float(p.get("lr", 0.05)), batch_size=int(p.get("batch_size", 64)),
                      seed=int(p.get("seed", 0)))
    ckpt = p.get("checkpoint")
    stat = Path(ckpt).stat() if ckpt and Path(ckpt).is_file() else None
    what = {k: p.get(k) for k in ("model", "hyper", "num_classes", "data", "normalize", "resize", "seed")}
    what.update(checkpoint=[ckpt, stat.st_size, stat.st_mtime_ns] if stat else ckpt, roles=roles, epochs=epochs,
                lr=cfg.lr, batch_size=cfg.batch_size, version=__version__)
    key = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = out_dir.parent / "_pretrained" / f"{key}.pt"
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        model.load_state_dict(blob["state_dict"])
        hist = History(**json.loads(blob["history"]))
    else:
        hist = fit(model, train, None, cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        torch.save({"state_dict": model.state_dict(), "history": json.dumps(hist.as_dict(), default=str)}, tmp)
        os.replace(tmp, path)  # concurrent workers: the last complete file wins, never a partial one
    torch.manual_seed(cfg.seed + 1)
    return hist


def _measure(p: dict[str, Any]) -> tuple[Any, bool]:
    """The cell's latency protocol: ``latency_batches`` (none: no timing) and ``threads``."""
    from quantbench.config import MeasureConfig

    batches = tuple(int(b) for b in (p.get("latency_batches") or ()))
    return MeasureConfig(batch_sizes=batches or (1,), threads=p.get("threads"), topk=int(p.get("topk", 5))), bool(batches)


def _fp32_rows(key: Any, model: Any, ds: Any, test: Any, out_dir: Path, p: dict[str, Any],
               train_eval: Any = None) -> tuple[Any, list[Any]]:
    """FP32 accuracy (test, and ``train_*`` on ``train_eval``), parameters, size, MACs, eager latency."""
    from quantbench.experiments.records import accuracy_rows
    from quantbench.experiments.runner import measure_costs, train_accuracy_rows
    from quantbench.measure.accuracy import evaluate

    m, timed = _measure(p)
    ev = evaluate(model, test, topk=(1, m.topk))
    return ev, (accuracy_rows(key, ev, "test") + train_accuracy_rows(key, model, train_eval, m)
                + measure_costs(key, model, ds.input_shape, m, out_dir / "model_fp32.pt", latency=timed))


def _variant_rows(p: dict[str, Any], key: Any, model: Any, variants: list[tuple[str, Any]], train_eval: Any,
                  input_shape: tuple[int, int, int]) -> list[Any]:
    """Train-split accuracy and (with ``latency_batches``) torch-int8 latency of each quantized (method, model)."""
    from quantbench.experiments.runner import variant_rows

    m, timed = _measure(p)
    return [row for method, qm in variants
            for row in variant_rows(key, method, model, qm, train_eval, m, input_shape, latency=timed,
                                    log=lambda msg: None)]


def _cell_ptq(p: dict[str, Any], out_dir: Path) -> list[Any]:
    from quantbench.experiments.ptq import run_ptq
    from quantbench.experiments.records import RowKey, history_rows
    from quantbench.experiments.runner import train_eval_subset
    from quantbench.quant.ptq import PTQConfig

    epochs = int(p.get("epochs", 0) or 0)
    roles = {"train": 0.7, "calib": 0.1, "test": 0.2} if epochs > 0 else {"calib": 0.1, "test": 0.9}
    ds, parts, model = _data_and_model(p, roles)
    key = RowKey(p["model"], p.get("data", "digits"))
    rows: list[Any] = []
    hist = _pretrain(model, parts.get("train"), p, out_dir, roles)
    if hist is not None:
        rows += history_rows(key, hist)
    model.eval()
    test = parts["test"]
    train_eval = train_eval_subset(parts, test)
    ev, fp_rows = _fp32_rows(key, model, ds, test, out_dir, p, train_eval)
    rows += fp_rows
    calib = parts["calib"]
    cfg = PTQConfig(scheme=p.get("scheme", "w8a8"), algo=p.get("algo", "mse"), per_channel=p.get("per_channel", True),
                    first_last=p.get("first_last", "same"), companding=p.get("companding", "none"),
                    calib_size=min(int(p.get("calib_size", 256)), len(calib)),
                    adaround_iters=int(p.get("adaround_iters", 200)))
    model_kwargs = {"num_classes": ds.num_classes, "in_channels": ds.input_shape[0], **(p.get("hyper") or {})}
    out = run_ptq(model, cfg, calib, test, key, ev, out_dir, model_name=p["model"], model_kwargs=model_kwargs,
                  input_shape=ds.input_shape, topk=int(p.get("topk", 5)))
    return rows + out.rows + _variant_rows(p, key, model, [(out.record["method"], out.model)], train_eval,
                                           ds.input_shape)


def _cell_train(p: dict[str, Any], out_dir: Path) -> list[Any]:
    from quantbench.experiments.records import RowKey, history_rows

    roles = {"train": 0.8, "test": 0.2}
    ds, parts, model = _data_and_model(p, roles)
    key = RowKey(p["model"], p.get("data", "digits"))
    hist = _pretrain(model, parts["train"], {**p, "epochs": p.get("epochs", 5)}, out_dir, roles)
    model.eval()
    _, rows = _fp32_rows(key, model, ds, parts["test"], out_dir, p)
    return history_rows(key, hist) + rows


def _cell_qat(p: dict[str, Any], out_dir: Path) -> list[Any]:
    from quantbench.config import TrainConfig
    from quantbench.experiments.qat import run_qat
    from quantbench.experiments.records import RowKey, history_rows
    from quantbench.quant.qat import QATConfig

    frac = float(p.get("train_fraction", 0.8))
    roles = {"train": frac, "test": 1.0 - frac}
    ds, parts, model = _data_and_model(p, roles)
    key = RowKey(p["model"], p.get("data", "digits"))
    rows: list[Any] = []
    hist = _pretrain(model, parts["train"], p, out_dir, roles, "pretrain_epochs")
    if hist is not None:
        rows += history_rows(key, hist)
    model.eval()
    from quantbench.data import subset
    from quantbench.experiments.runner import train_eval_subset

    train_eval = train_eval_subset(parts, parts["test"])
    ev, fp_rows = _fp32_rows(key, model, ds, parts["test"], out_dir, p, train_eval)

    calib = subset(parts["train"], min(int(p.get("calib_size", 256)), len(parts["train"])), seed=int(p.get("seed", 0)))
    cfg = QATConfig(scheme=p.get("scheme", "w4a4"), init=p.get("init", "mse"), act_grad=p.get("act_grad", "lsq"),
                    first_last=p.get("first_last", "same"), bn_freeze_epoch=int(p.get("bn_freeze_epoch", 0)),
                    calib_size=len(calib),
                    train=TrainConfig(epochs=int(p.get("epochs", 3)), lr=float(p.get("lr", 1e-3)), optimizer="adamw",
                                      weight_decay=0.0, seed=int(p.get("seed", 0))))
    model_kwargs = {"num_classes": ds.num_classes, "in_channels": ds.input_shape[0], **(p.get("hyper") or {})}
    plan = None
    if p.get("plan"):
        from quantbench.experiments.qat import mixed_rows, qat_extra, search_mixed

        kind, _, kb = str(p["plan"]).partition(":")
        if kind != "mixed" or not kb:
            raise QuantbenchError(f"qat cell: plan {p['plan']!r} unknown; expected mixed:KB")
        search = search_mixed(model, calib, budget_bytes=int(float(kb) * 1000), act_bits=int(cfg.scheme.split("a")[-1]),
                              model_name=p["model"], model_kwargs=model_kwargs, input_shape=ds.input_shape,
                              extra=qat_extra(cfg))
        plan = search.plan
        rows += mixed_rows(RowKey(p["model"], p.get("data", "digits"), "mixed-qat", "torch"), search)
    out = run_qat(model, cfg, calib, parts["train"], parts["test"], key, ev, out_dir, model_name=p["model"],
                  model_kwargs=model_kwargs, input_shape=ds.input_shape, plan=plan,
                  fp32_epoch_s=hist.wall_s / len(hist.epochs) if hist is not None and hist.epochs else None,
                  fp32_finetune=bool(p.get("fp32_finetune", False)), topk=int(p.get("topk", 5)))
    quantized = [(part.record["method"], part.model) for part in (out.ptq, out.qat)]
    return rows + fp_rows + out.rows + _variant_rows(p, key, model, quantized, train_eval, ds.input_shape)


def _cell_bench(p: dict[str, Any], out_dir: Path) -> list[Any]:
    from quantbench.experiments.bench import BenchSpec, bench_rows, run_bench

    spec_keys = {"model", "checkpoint", "engines", "variants", "batch_sizes", "input_size", "threads", "num_classes",
                 "min_time_s", "min_iters", "warmup", "calib_size"}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in p.items() if k in spec_keys}
    if isinstance(kw.get("engines"), str):
        kw["engines"] = (kw["engines"],)
    spec = BenchSpec(hyper=dict(p.get("hyper") or {}), isolate=False, **kw)
    res = run_bench(spec, log=lambda m: None)
    c, h, w = res.input_shape
    return bench_rows(res, f"input:{c}x{h}x{w}")


_RUNNERS: dict[str, Callable[[dict[str, Any], Path], list[Any]]] = {
    "ptq": _cell_ptq, "qat": _cell_qat, "train": _cell_train, "bench": _cell_bench}


def run_cell(kind: str, cell_id: str, params: dict[str, Any], out_root: str, threads: int | None = None
             ) -> dict[str, Any]:
    """Run one cell; returns plain data (rows as dicts) for the driver to store. Never writes the store.

    Errors come back as ``{"error": ...}`` so one bad cell does not stop the sweep.
    """
    import torch

    from quantbench.measure.environment import environment

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(int(params.get("seed", 0)))
    out_dir = Path(out_root) / cell_id
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        rows = _RUNNERS[kind](params, out_dir)
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


def _pool(jobs: list[tuple[Any, ...]], workers: int) -> Iterator[dict[str, Any]]:
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
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
        out_root = str(Path(sweep.out_dir) / sweep.name)
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
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=f"sweep {sweep.name}", unit="cell", file=sys.stderr)
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
                                           "model": {"name": cell.params.get("model")},
                                           "data": {"spec": cell.params.get("data")}},
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
