"""SQLite results store: transactional writes, filters, exports, crash safety."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys

import pytest

from quantbench.errors import QuantbenchError
from quantbench.store import Result, ResultStore, export_rows


def _rows(n: int, metric: str = "top1") -> list[Result]:
    return [Result("lenet", "digits", "fp32", "torch", metric, float(i), "%", batch=i, extra={"i": i}) for i in range(n)]


def test_run_and_results_round_trip(tmp_path):
    db = tmp_path / "sub" / "r.db"
    with ResultStore(db) as store:
        run_id = store.start_run("run", config={"a": [1, 2]}, environment={"git_sha": "abc", "cpu_model": "x"})
        assert store.add_results(run_id, _rows(3)) == 3
        store.finish_run(run_id)
    with ResultStore(db) as store:
        run = store.run(run_id[:20])
        assert run["status"] == "finished" and run["config"] == {"a": [1, 2]} and run["git_sha"] == "abc"
        rows = store.query(run_id=run_id)
        assert [r["value"] for r in rows] == [0.0, 1.0, 2.0]
        assert rows[1]["extra"] == {"i": 1} and rows[1]["batch"] == 1
        assert store.query(metric="top%", batch=2)[0]["value"] == 2.0
        assert store.query(model="resnet20") == []


def test_failed_batch_leaves_earlier_results_intact(tmp_path):
    db = tmp_path / "r.db"
    store = ResultStore(db)
    run_id = store.start_run("run", config={}, environment={})
    store.add_results(run_id, _rows(2))

    bad = _rows(2) + [Result("m", "d", "fp32", "torch", None, 1.0, "%")]  # metric NULL violates NOT NULL
    with pytest.raises(sqlite3.IntegrityError):
        store.add_results(run_id, bad)
    assert len(store.query(run_id=run_id)) == 2  # the failed batch added nothing
    store.close()


def test_crash_mid_run_keeps_committed_rows(tmp_path):
    """A process killed after committing keeps its rows and the file stays a valid database."""
    db = tmp_path / "r.db"
    code = (
        "import os\n"
        "from quantbench.store import ResultStore, Result\n"
        f"s = ResultStore({str(db)!r})\n"
        "rid = s.start_run('run', config={}, environment={})\n"
        "s.add_results(rid, [Result('m','d','fp32','torch','top1',1.0,'%')])\n"
        "os._exit(9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == 9
    with ResultStore(db) as store:  # the next open finds the dead process's run and says so
        assert store.runs()[0]["status"] == "interrupted"
        assert store.query(metric="top1") == []  # its partial rows are left out ...
        assert [r["value"] for r in store.query(metric="top1", unfinished=True)] == [1.0]  # ... unless asked for
        assert [r["value"] for r in store.query(run_id=store.runs()[0]["run_id"])] == [1.0]


def test_exports(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        run_id = store.start_run("run", config={}, environment={})
        store.add_results(run_id, _rows(2))
        store.finish_run(run_id)
        rows = store.query()
    parsed = list(csv.DictReader(io.StringIO(export_rows(rows, "csv"))))
    assert [float(r["value"]) for r in parsed] == [0.0, 1.0] and json.loads(parsed[1]["extra"]) == {"i": 1}
    assert [r["metric"] for r in json.loads(export_rows(rows, "json"))] == ["top1", "top1"]
    with pytest.raises(QuantbenchError, match="xml"):
        export_rows(rows, "xml")


def test_not_a_database_is_a_clear_error_and_file_untouched(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    before = junk.read_bytes()
    with pytest.raises(QuantbenchError, match="junk.db"):
        ResultStore(junk)
    assert junk.read_bytes() == before
    with pytest.raises(QuantbenchError, match="is a folder"):
        ResultStore(tmp_path)


def test_unknown_run_id(tmp_path):
    with ResultStore(tmp_path / "r.db") as store, pytest.raises(QuantbenchError, match="no run matching"):
        store.run("nope")


def test_a_live_run_of_another_process_stays_running(tmp_path):
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        rid = store.start_run("run", config={}, environment={})  # this process: alive
    with ResultStore(db) as store:
        assert store.run(rid)["status"] == "running"


def test_another_applications_database_is_refused_and_untouched(tmp_path):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE contacts (name TEXT)")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(QuantbenchError, match="another application's SQLite database"):
        ResultStore(other)
    assert other.read_bytes() == before


def test_damaged_store_is_refused_by_path_and_not_modified(tmp_path):
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        rid = store.start_run("run", config={}, environment={})
        store.add_results(rid, _rows(400))
        store.finish_run(rid)
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = bytearray(db.read_bytes())
    page = 4096
    for k in (2, 3):  # overwrite two pages mid-file
        data[k * page:(k + 1) * page] = b"\xa5" * page
    db.write_bytes(bytes(data))
    before = db.read_bytes()
    with pytest.raises(QuantbenchError, match="r.db: the database is damaged"):
        ResultStore(db)
    assert db.read_bytes() == before


def test_garbage_schema_version_is_one_line(tmp_path):
    db = tmp_path / "r.db"
    ResultStore(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value='abc' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(QuantbenchError, match="schema version 'abc' is not a number"):
        ResultStore(db)


def test_a_version_1_store_is_migrated(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, created TEXT NOT NULL,
                           finished TEXT, status TEXT NOT NULL, git_sha TEXT, config TEXT NOT NULL,
                           environment TEXT NOT NULL, out_dir TEXT);
        CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, model TEXT NOT NULL,
                              data TEXT NOT NULL, method TEXT NOT NULL, engine TEXT NOT NULL, batch INTEGER,
                              metric TEXT NOT NULL, value REAL, unit TEXT NOT NULL, extra TEXT NOT NULL,
                              created TEXT NOT NULL);
        INSERT INTO runs VALUES ('r1', 'run', NULL, '2026', '2026', 'finished', NULL, '{}', '{}', NULL);
        INSERT INTO results VALUES (1, 'r1', 'm', 'd', 'fp32', 'torch', NULL, 'top1', 50.0, '%', '{}', '2026');
    """)
    con.commit()
    con.close()
    with ResultStore(db) as store:
        assert [r["value"] for r in store.query(metric="top1")] == [50.0]
        store.start_run("run", config={}, environment={})
