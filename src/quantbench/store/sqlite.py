"""SQLite results store: one ``runs`` row per invocation, many ``results`` rows per run.

Why SQLite: results from many runs (and later sweeps, devices) must be queried together,
survive crashes and need no server. Every write is one transaction: a crash mid-run
leaves every earlier result intact and never a half-written batch (WAL journal).

Example:
    >>> store = ResultStore(":memory:")
    >>> run_id = store.start_run("eval", config={"a": 1}, environment={})
    >>> store.add_results(run_id, [Result("m", "d", "fp32", "torch", "top1", 90.0, "%")])
    1
    >>> store.query(metric="top1")[0]["value"]
    90.0
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    name        TEXT,
    created     TEXT NOT NULL,
    finished    TEXT,
    status      TEXT NOT NULL,
    git_sha     TEXT,
    config      TEXT NOT NULL,
    environment TEXT NOT NULL,
    out_dir     TEXT
);
CREATE TABLE IF NOT EXISTS results (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id   TEXT NOT NULL REFERENCES runs(run_id),
    model    TEXT NOT NULL,
    data     TEXT NOT NULL,
    method   TEXT NOT NULL,
    engine   TEXT NOT NULL,
    batch    INTEGER,
    metric   TEXT NOT NULL,
    value    REAL,
    unit     TEXT NOT NULL,
    extra    TEXT NOT NULL,
    created  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_run ON results(run_id);
CREATE INDEX IF NOT EXISTS results_metric ON results(metric);
CREATE TABLE IF NOT EXISTS sweep_cells (
    sweep_id  TEXT NOT NULL,
    cell_id   TEXT NOT NULL,
    run_id    TEXT NOT NULL REFERENCES runs(run_id),
    params    TEXT NOT NULL,
    finished  TEXT NOT NULL,
    PRIMARY KEY (sweep_id, cell_id)
);
"""

RESULT_COLUMNS = ("id", "run_id", "model", "data", "method", "engine", "batch", "metric", "value", "unit",
                  "extra", "created")


@dataclass(frozen=True)
class Result:
    """One measured number with everything needed to interpret it.

    ``method`` is how the model was produced (fp32, w8a8-minmax, ...), ``engine`` what ran it
    (torch, onnxruntime, ...), ``unit`` makes the number unambiguous (%, bytes, MACs, ms, img/s).
    """

    model: str
    data: str
    method: str
    engine: str
    metric: str
    value: float | None
    unit: str
    batch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id(kind: str) -> str:
    """Sortable, unique run id: UTC time + kind + random suffix."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{kind}-{uuid.uuid4().hex[:6]}"


class ResultStore:
    """A results database at ``path`` (created with its folder when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            p = Path(self.path)
            if p.exists() and p.is_dir():
                raise QuantbenchError(f"{p}: is a folder; expected a SQLite results file")
            p.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.row_factory = sqlite3.Row
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._db:
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            raise QuantbenchError(f"{self.path}: not a quantbench results database ({exc})") from None
        version = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        if int(version) != SCHEMA_VERSION:
            raise QuantbenchError(f"{self.path}: results schema version {version}; expected {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes (each one transaction)
    def start_run(self, kind: str, *, config: dict[str, Any], environment: dict[str, Any],
                  name: str | None = None, run_id: str | None = None, out_dir: str | None = None) -> str:
        """Insert a run row with status ``running``; returns its id."""
        run_id = run_id or new_run_id(kind)
        with self._db:
            self._db.execute(
                "INSERT INTO runs (run_id, kind, name, created, status, git_sha, config, environment, out_dir)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (run_id, kind, name, _now(), environment.get("git_sha"), json.dumps(config, default=str),
                 json.dumps(environment, default=str), out_dir),
            )
        return run_id

    def finish_run(self, run_id: str, status: str = "finished") -> None:
        with self._db:
            self._db.execute("UPDATE runs SET status=?, finished=? WHERE run_id=?", (status, _now(), run_id))

    def add_results(self, run_id: str, results: Iterable[Result]) -> int:
        """Append results atomically: either all of them are stored or none."""
        rows = self._result_tuples(run_id, results)
        with self._db:
            self._db.executemany(
                "INSERT INTO results (run_id, model, data, method, engine, batch, metric, value, unit, extra, created)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
        return len(rows)

    @staticmethod
    def _result_tuples(run_id: str, results: Iterable[Result]) -> list[tuple[Any, ...]]:
        rows = []
        now = _now()
        for r in results:
            value = None if r.value is None or (isinstance(r.value, float) and math.isnan(r.value)) else float(r.value)
            rows.append((run_id, r.model, r.data, r.method, r.engine, r.batch, r.metric, value, r.unit,
                         json.dumps(r.extra, default=str, sort_keys=True), now))
        return rows

    def add_cell(self, sweep_id: str, cell_id: str, params: dict[str, Any], *, kind: str, config: dict[str, Any],
                 environment: dict[str, Any], results: Iterable[Result], name: str | None = None,
                 out_dir: str | None = None) -> str | None:
        """Store one finished sweep cell - its run, all its results and the "done" mark - in ONE transaction.

        Why one transaction: a sweep killed at any moment (kill -9 included) then has, for
        every cell, either everything or nothing; a resumed sweep reruns exactly the cells with
        nothing. A cell already stored (same sweep and cell id) is left as it is and None is
        returned, so a cell can never be stored twice.
        """
        run_id = new_run_id(kind)
        rows = self._result_tuples(run_id, results)
        try:
            with self._db:
                if self._db.execute("SELECT 1 FROM sweep_cells WHERE sweep_id=? AND cell_id=?",
                                    (sweep_id, cell_id)).fetchone():
                    return None
                self._db.execute(
                    "INSERT INTO runs (run_id, kind, name, created, finished, status, git_sha, config, environment,"
                    " out_dir) VALUES (?, ?, ?, ?, ?, 'finished', ?, ?, ?, ?)",
                    (run_id, kind, name, _now(), _now(), environment.get("git_sha"), json.dumps(config, default=str),
                     json.dumps(environment, default=str), out_dir),
                )
                self._db.executemany(
                    "INSERT INTO results (run_id, model, data, method, engine, batch, metric, value, unit, extra,"
                    " created) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
                self._db.execute("INSERT INTO sweep_cells VALUES (?, ?, ?, ?, ?)",
                                 (sweep_id, cell_id, run_id, json.dumps(params, default=str, sort_keys=True), _now()))
        except sqlite3.IntegrityError:
            return None
        return run_id

    def sweep_cells(self, sweep_id: str) -> dict[str, dict[str, Any]]:
        """Finished cells of a sweep: cell id -> {run_id, params, finished}."""
        out = {}
        for row in self._db.execute("SELECT * FROM sweep_cells WHERE sweep_id=? ORDER BY finished", (sweep_id,)):
            d = dict(row)
            d["params"] = json.loads(d["params"])
            out[d["cell_id"]] = d
        return out

    def sweeps(self) -> list[str]:
        """Ids of every sweep with at least one finished cell."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT sweep_id FROM sweep_cells ORDER BY sweep_id")]

    # ------------------------------------------------------------------ reads
    def runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM runs", []
        if kind:
            sql, args = sql + " WHERE kind=?", [kind]
        out = []
        for row in self._db.execute(sql + " ORDER BY created, run_id", args):
            d = dict(row)
            d["config"] = json.loads(d["config"])
            d["environment"] = json.loads(d["environment"])
            out.append(d)
        return out

    def run(self, run_id: str) -> dict[str, Any]:
        """The run row for ``run_id``; a prefix is accepted when it is unique."""
        rows = [r for r in self.runs() if r["run_id"].startswith(run_id)]
        if len(rows) != 1:
            what = "no run" if not rows else f"{len(rows)} runs"
            raise QuantbenchError(f"{self.path}: {what} matching run id {run_id!r}")
        return rows[0]

    def query(self, *, run_id: str | None = None, model: str | None = None, data: str | None = None,
              method: str | None = None, engine: str | None = None, metric: str | None = None,
              batch: int | None = None) -> list[dict[str, Any]]:
        """Result rows matching every filter given (SQL LIKE patterns allowed, e.g. ``top%``)."""
        where, args = [], []
        for col, val in (("run_id", run_id), ("model", model), ("data", data), ("method", method),
                         ("engine", engine), ("metric", metric)):
            if val is not None:
                where.append(f"{col} LIKE ?")
                args.append(val + "%" if col == "run_id" else val)
        if batch is not None:
            where.append("batch = ?")
            args.append(batch)
        sql = "SELECT * FROM results" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        out = []
        for row in self._db.execute(sql, args):
            d = dict(row)
            d["extra"] = json.loads(d["extra"])
            out.append(d)
        return out


def export_rows(rows: Sequence[dict[str, Any]], fmt: str) -> str:
    """Render result rows as ``csv`` or ``json`` text."""
    if fmt == "json":
        return json.dumps(list(rows), indent=1, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "extra": json.dumps(r.get("extra", {}), sort_keys=True)})
        return buf.getvalue()
    raise QuantbenchError(f"unknown export format {fmt!r}; expected csv or json")
