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
    with ResultStore(db) as store:
        assert [r["value"] for r in store.query(metric="top1")] == [1.0]
        assert store.runs()[0]["status"] == "running"


def test_exports(tmp_path):
    with ResultStore(tmp_path / "r.db") as store:
        run_id = store.start_run("run", config={}, environment={})
        store.add_results(run_id, _rows(2))
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
