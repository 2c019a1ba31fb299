"""THE experiment layer: every verb, sweep cell and API call that runs an experiment comes here.

An experiment *kind* is one frozen config dataclass (its defaults live there, nowhere else) and
one handler ``handler(cfg, ctx) -> record`` registered in :data:`KINDS` - the pattern the
quantizers follow (torchao's config + handler). :func:`run_experiment` is the one way to run
one: it seeds every generator before anything is built, runs the handler, stores its rows as
each stage commits them (a crash keeps what was measured; the run is marked ``failed``) and
writes ``results.json`` and the report. :func:`run_in_cell` runs the same handler for a sweep
worker, which returns rows instead of writing the store.

Example:
    >>> from quantbench.experiments import kinds
    >>> cfg = config_for("eval", {"model": "lenet", "data": "digits", "no_store": True})
    >>> outcome = run_experiment(cfg, progress=False, log=lambda m: None)
    >>> outcome.record["n_images"]
    1797
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantbench.config import build, to_dict
from quantbench.errors import QuantbenchError
from quantbench.registry import Registry

__all__ = ["KINDS", "Context", "Kind", "RunOutcome", "config_for", "kind_of", "register_kind", "run_experiment",
           "run_in_cell", "seed_everything"]


@dataclass(frozen=True)
class Kind:
    """A registered experiment kind."""

    name: str
    config: type
    handler: Callable[[Any, Context], dict[str, Any]]
    help: str
    stored: bool = True  # False: the kind computes and prints only (lint)


KINDS: Registry[Kind] = Registry("experiment kind")


def register_kind(name: str, config: type, handler: Callable[[Any, Context], dict[str, Any]], help: str,
                  *, stored: bool = True) -> None:
    """Add a kind; its config class learns its kind name (``cfg.kind``)."""
    KINDS.register(name, help=help)(Kind(name, config, handler, help, stored))
    config.kind = name  # type: ignore[attr-defined]


def kind_of(cfg: Any) -> Kind:
    """The registered kind of a config object."""
    name = getattr(type(cfg), "kind", None)
    if name is None:
        raise QuantbenchError(f"{type(cfg).__name__} is not an experiment config")
    return KINDS.get(name)


def config_for(kind: str, values: dict[str, Any] | None = None) -> Any:
    """The validated config of ``kind`` from plain values (unknown keys and bad values name the key)."""
    from quantbench.experiments import kinds  # noqa: F401 - registers the built-in kinds

    return build(KINDS.get(kind).config, dict(values or {}))


@dataclass
class Context:
    """What a handler gets besides its config: where files go, how to commit rows, how to talk."""

    out_dir: Path
    commit: Callable[[list[Any]], None]
    log: Callable[[str], None]
    progress: bool = True
    model: Any = None  # an in-memory float model (Python API) used instead of building cfg.model
    quantized: Any = None  # an in-memory QuantizedModel (Python API: bench/export an existing one)
    data: Any = None  # in-memory images (Python API: a tensor, (images, labels), a DataLoader) instead of cfg.data
    rows: list[Any] = field(default_factory=list)


@dataclass
class RunOutcome:
    """What a run produced: its id and folder, its rows, the handler's record and the report paths."""

    run_id: str | None
    out_dir: Path
    record: dict[str, Any]
    results: list[Any] = field(default_factory=list)
    report_html: Path | None = None
    report_md: Path | None = None


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random before anything is built, so the same command gives the same numbers."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


def _threads(cfg: Any) -> None:
    threads = getattr(cfg, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def run_experiment(cfg: Any, *, progress: bool = True, log: Callable[[str], None] | None = None,
                   model: Any = None, quantized: Any = None, data: Any = None) -> RunOutcome:
    """Run one experiment and store it (unless ``cfg.no_store`` or the kind stores nothing).

    Args:
        cfg: A config of a registered kind (:func:`config_for` builds one).
        model / quantized / data: In-memory models and images (Python API) the handler uses instead of
            building or opening them.

    Returns:
        The outcome: run id (None when not stored), folder, the handler's record, rows, report paths.
    """
    from quantbench.measure.environment import environment

    kind = kind_of(cfg)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    seed_everything(getattr(cfg, "seed", 0))
    _threads(cfg)
    config = {"kind": kind.name, **to_dict(cfg)}
    if not kind.stored or getattr(cfg, "no_store", False):
        with tempfile.TemporaryDirectory(prefix=f"quantbench-{kind.name}-") as tmp:
            folder = Path(cfg.out) if getattr(cfg, "out", None) else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            if getattr(cfg, "out", None):  # a folder the user keeps: its files say what made them, as a stored run's do
                _write_config(folder, config)
            ctx = Context(folder, lambda rows: ctx.rows.extend(rows), log, progress, model, quantized, data)
            record = kind.handler(cfg, ctx)
            return RunOutcome(None, folder, record, ctx.rows)
    from quantbench.store import ResultStore, new_run_id

    env = environment()
    run_id = new_run_id(kind.name)
    folder = Path(cfg.out) if cfg.out else Path(cfg.store).parent / run_id
    if folder.exists() and not folder.is_dir():
        raise QuantbenchError(f"{folder}: --out names a file; expected a folder for the run's files")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    store: Any = None
    outcome = RunOutcome(run_id, folder, {})
    name = cfg.name or f"{kind.name} {getattr(cfg, 'model', '')}".strip()
    started = False

    def start() -> None:  # the run row appears with the first rows: a run refused up front leaves nothing
        nonlocal started, store
        if not started:
            store = ResultStore(cfg.store)
            store.start_run(kind.name, config=config, environment=env, name=name, run_id=run_id, out_dir=str(folder))
            _write_config(folder, config)
            started = True

    def commit(rows: list[Any]) -> None:
        start()
        store.add_results(run_id, rows)
        outcome.results.extend(rows)

    try:
        ctx = Context(folder, commit, log, progress, model, quantized, data)
        outcome.record = kind.handler(cfg, ctx)
        start()
        store.finish_run(run_id, "finished")
    except BaseException as exc:
        if started:
            store.finish_run(run_id, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        elif created:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        if started:
            _write_results_json(outcome, config, env)
            store.close()
    from quantbench.report import write_report

    outcome.report_html, outcome.report_md = write_report(cfg.store, run_id, folder)
    outcome.record.update(run_id=run_id, out_dir=str(folder), report=str(outcome.report_html))
    return outcome


def run_in_cell(cfg: Any, out_dir: Path, log: Callable[[str], None] | None = None) -> list[Any]:
    """Run ``cfg``'s handler for a sweep worker: rows come back, nothing is stored here."""
    kind = kind_of(cfg)
    seed_everything(getattr(cfg, "seed", 0))
    _threads(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Any] = []
    ctx = Context(out_dir, rows.extend, log or (lambda m: None), False)
    kind.handler(dataclasses.replace(cfg, out=str(out_dir)) if hasattr(cfg, "out") else cfg, ctx)
    return rows


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    """``config.yaml``: the resolved config - itself an experiment file that reruns this experiment."""
    import yaml

    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _write_results_json(outcome: RunOutcome, config: dict[str, Any], env: dict[str, Any]) -> Path:
    """``results.json``: the resolved config, environment and every row, in one file."""
    path = outcome.out_dir / "results.json"
    payload = {"run_id": outcome.run_id, "config": config, "environment": env,
               "results": [r.as_dict() for r in outcome.results]}
    path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    return path
