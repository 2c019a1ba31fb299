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
import os
import socket
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError

SCHEMA_VERSION = 2
APPLICATION_ID = 0x51424E43  # "QBNC": PRAGMA application_id of every quantbench store
SQLITE_MAGIC = b"SQLite format 3\x00"

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
    out_dir     TEXT,
    pid         INTEGER,
    host        TEXT
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    return True


class ResultStore:
    """A results database at ``path`` (created with its folder when missing).

    Opening checks before it writes anything: the file must be a SQLite database that passes
    ``PRAGMA quick_check`` and carries quantbench's application id (or, from older versions, our
    tables); a damaged file or another application's database is refused by path and never
    modified. Runs left ``running`` by a process that no longer exists (``kill -9``) are marked
    ``interrupted``; their rows are left out of queries unless asked for.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        fresh = True
        if self.path != ":memory:":
            p = Path(self.path)
            if p.exists() and p.is_dir():
                raise QuantbenchError(f"{p}: is a folder; expected a SQLite results file")
            fresh = _check_file(p)
            p.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.row_factory = sqlite3.Row
            if not fresh:
                self._verify()
            if self.path != ":memory:" and self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            if fresh or self._db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                with self._db:  # writes only what is missing: opening to read leaves the file as it was
                    self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    self._db.executescript(_SCHEMA)
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                     (str(SCHEMA_VERSION),))
            self._migrate()
            self._mark_interrupted()
        except sqlite3.DatabaseError as exc:
            raise QuantbenchError(f"{self.path}: not a usable quantbench results database ({exc})") from None

    def _verify(self) -> None:
        """An existing file: intact, and ours (by application id, or by the tables of older versions)."""
        try:
            check = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            check = [str(exc)]
        if check != ["ok"]:
            self._db.close()
            raise QuantbenchError(f"{self.path}: the database is damaged (quick_check: {'; '.join(check)[:200]}); "
                                  "it was not modified - restore it from a copy")
        app = self._db.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        legacy = app == 0 and {"meta", "runs", "results"} <= tables
        if app != APPLICATION_ID and not legacy and not (app == 0 and not tables):
            self._db.close()
            raise QuantbenchError(f"{self.path}: is another application's SQLite database, not a quantbench results "
                                  "store; refusing to modify it (pass --store with a new file)")

    def _migrate(self) -> None:
        raw = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        try:
            version = int(raw)
        except (TypeError, ValueError):
            raise QuantbenchError(f"{self.path}: results schema version {raw!r} is not a number; the file is not a "
                                  "store this quantbench wrote") from None
        if version == 1:  # v2 records which process owns a running run
            with self._db:
                cols = {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}
                for col, tp in (("pid", "INTEGER"), ("host", "TEXT")):
                    if col not in cols:
                        self._db.execute(f"ALTER TABLE runs ADD COLUMN {col} {tp}")
                self._db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        elif version != SCHEMA_VERSION:
            raise QuantbenchError(f"{self.path}: results schema version {version}; this quantbench reads "
                                  f"{SCHEMA_VERSION} (a newer quantbench wrote it)")

    def _mark_interrupted(self) -> None:
        host = socket.gethostname()
        stale = [r["run_id"] for r in self._db.execute("SELECT run_id, pid, host FROM runs WHERE status='running'")
                 if r["pid"] is None or (r["host"] == host and not _pid_alive(int(r["pid"])))]
        if stale:
            with self._db:
                self._db.executemany("UPDATE runs SET status='interrupted', finished=? WHERE run_id=?",
                                     [(_now(), rid) for rid in stale])

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
                "INSERT INTO runs (run_id, kind, name, created, status, git_sha, config, environment, out_dir, pid,"
                " host) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (run_id, kind, name, _now(), environment.get("git_sha"), json.dumps(config, default=str),
                 json.dumps(environment, default=str), out_dir, os.getpid(), socket.gethostname()),
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
        for row in self._read("SELECT * FROM sweep_cells WHERE sweep_id=? ORDER BY finished", (sweep_id,)):
            d = dict(row)
            d["params"] = self._json(d["params"], "sweep cell")
            out[d["cell_id"]] = d
        return out

    def sweeps(self) -> list[str]:
        """Ids of every sweep with at least one finished cell."""
        return [r[0] for r in self._read("SELECT DISTINCT sweep_id FROM sweep_cells ORDER BY sweep_id", ())]

    # ------------------------------------------------------------------ reads
    def runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM runs", []
        if kind:
            sql, args = sql + " WHERE kind=?", [kind]
        out = []
        for row in self._read(sql + " ORDER BY created, rowid", args):
            d = dict(row)
            d["config"] = self._json(d["config"], "config")
            d["environment"] = self._json(d["environment"], "environment")
            out.append(d)
        return out

    def _read(self, sql: str, args: Sequence[Any]) -> list[Any]:
        try:
            return self._db.execute(sql, list(args)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise QuantbenchError(f"{self.path}: cannot read the results ({exc}); the file may be damaged") from None

    def _json(self, text: str, what: str) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError):
            raise QuantbenchError(f"{self.path}: a stored {what} is not valid JSON; the file is damaged") from None

    def run(self, run_id: str) -> dict[str, Any]:
        """The run row for ``run_id``; a prefix is accepted when it is unique."""
        rows = [r for r in self.runs() if r["run_id"].startswith(run_id)]
        if len(rows) != 1:
            what = "no run" if not rows else f"{len(rows)} runs"
            raise QuantbenchError(f"{self.path}: {what} matching run id {run_id!r}")
        return rows[0]

    def query(self, *, run_id: str | None = None, model: str | None = None, data: str | None = None,
              method: str | None = None, engine: str | None = None, metric: str | None = None,
              batch: int | None = None, unfinished: bool = False) -> list[dict[str, Any]]:
        """Result rows matching every filter given (SQL LIKE patterns allowed, e.g. ``top%``).

        Rows of runs that did not finish (failed, interrupted, still running) are left out unless
        ``unfinished`` or the run is named by ``run_id``.
        """
        where, args = [], []
        for col, val in (("run_id", run_id), ("model", model), ("data", data), ("method", method),
                         ("engine", engine), ("metric", metric)):
            if val is not None:
                where.append(f"{col} LIKE ?")
                args.append(val + "%" if col == "run_id" else val)
        if batch is not None:
            where.append("batch = ?")
            args.append(batch)
        if not unfinished and run_id is None:
            where.append("run_id IN (SELECT run_id FROM runs WHERE status='finished')")
        sql = "SELECT * FROM results" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        out = []
        for row in self._read(sql, args):
            d = dict(row)
            d["extra"] = self._json(d["extra"], "result")
            out.append(d)
        return out


def _check_file(p: Path) -> bool:
    """True for a new store (missing or empty file); refuses anything that is not a SQLite file."""
    if not p.exists() or p.stat().st_size == 0:
        return True
    try:
        with p.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise QuantbenchError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if head != SQLITE_MAGIC:
        raise QuantbenchError(f"{p}: is not a SQLite database (a quantbench results store is one); refusing to "
                              "modify it")
    return False


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
