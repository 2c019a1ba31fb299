"""Sweeps: expansion, resume after kill -9 with nothing lost or duplicated, executors agree."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantbench.cli import main
from quantbench.errors import QuantbenchError
from quantbench.store import ResultStore
from quantbench.sweep import expand, load_sweep, run_sweep

SYN = "synthetic:n=240,shape=1x8x8,classes=4,seed=0"
TIMING = ("time", "seconds", "latency", "throughput", "_s")


def _write(tmp_path: Path, name: str, grid: str, extra: str = "") -> Path:
    f = tmp_path / f"{name}.yaml"
    f.write_text(f"name: {name}\nkind: ptq\nout: {tmp_path / 'out'}\nmodel: lenet\ndata: '{SYN}'\n"
                 f"pretrain_epochs: 3\ncalib_size: 24\n{extra}grid:\n{grid}")
    return f


def _cells(store_path: Path, sweep: str) -> dict[str, dict]:
    """cell id -> {(method, engine, metric, batch): value} without timing metrics, and row counts."""
    out = {}
    with ResultStore(store_path) as store:
        for cid, c in store.sweep_cells(sweep).items():
            rows = store.query(run_id=c["run_id"])
            keyed = {}
            for r in rows:
                if any(t in r["metric"] for t in TIMING):
                    continue
                k = (r["method"], r["engine"], r["metric"], r["batch"], str(r["extra"].get("epoch")),
                     str(r["extra"].get("layer")))
                assert k not in keyed, f"duplicate row {k} in cell {cid}"
                keyed[k] = r["value"]
            out[cid] = keyed
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for cid in a:
        assert a[cid].keys() == b[cid].keys(), cid
        for k, v in a[cid].items():
            w = b[cid][k]
            assert (v is None and w is None) or math.isclose(v, w, rel_tol=1e-5, abs_tol=1e-6), (cid, k, v, w)


def test_expand_ids_and_hyper_keys(tmp_path):
    f = _write(tmp_path, "e", "  method: [w8a8, w4a8]\n  hyper.width: [1, 2]\n", "hyper.depth: 3\n")
    cells = expand(load_sweep(f))
    assert len(cells) == 4 and len({c.cell_id for c in cells}) == 4
    assert cells[1].params["hyper"] == {"depth": 3, "width": 2} and cells[1].params["method"] == "w8a8"
    assert [c.cell_id for c in expand(load_sweep(f))] == [c.cell_id for c in cells]  # ids are stable


@pytest.mark.parametrize("text, needle", [
    ("kind: magic\nmodel: lenet\n", "unknown experiment kind 'magic'"),
    ("kind: ptq\nmodel: lenet\ngrid: {method: w8a8}\n", "grid.method must be a non-empty list"),
    ("kind: ptq\nmodel: lenet\ncolour: red\ngrid: {method: [w8a8]}\n", "unknown key 'colour' for a ptq experiment"),
    ("kind: ptq\ngrid: {method: [w8a8, 'w8a8:nosuch']}\n", "cell method=w8a8:nosuch: method .*unknown algorithm"),
    ("kind: ptq\nbase: {}\ngrid: {method: [w8a8]}\n", "unknown key 'base'"),
])
def test_bad_sweep_files(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(QuantbenchError, match=needle):
        load_sweep(f)


def test_killed_sweep_resumes_with_one_row_set_per_cell(tmp_path):
    f = _write(tmp_path, "killme", "  method: [w8a8:minmax, w8a8:mse, w4a8:minmax, w4a8:mse, w2a8:minmax, w2a8:mse]\n")
    db = tmp_path / "k.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "quantbench", "sweep", str(f), "--store", str(db),
                             "--no-progress", "--threads", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    done = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=5) as con:
                        done = con.execute("SELECT COUNT(*) FROM sweep_cells").fetchone()[0]
                except sqlite3.OperationalError:
                    continue  # the table is not created yet
                if done >= 2:
                    break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 2 <= done < 6, f"kill landed after {done} of 6 cells"
    # resume in this process: only the missing cells run
    out = run_sweep(load_sweep(f), store_path=str(db), progress=False, threads=1, log=lambda m: None)
    assert len(out.skipped) >= 2 and len(out.ran) + len(out.skipped) == 6 and not out.failed
    clean_db = tmp_path / "clean.db"
    run_sweep(load_sweep(f), store_path=str(clean_db), progress=False, threads=1, log=lambda m: None)
    resumed, clean = _cells(db, "killme"), _cells(clean_db, "killme")
    assert len(resumed) == 6
    _same(resumed, clean)
    with ResultStore(db) as store:  # every run row belongs to exactly one stored cell: no orphans
        cell_runs = {c["run_id"] for c in store.sweep_cells("killme").values()}
        assert {r["run_id"] for r in store.runs()} == cell_runs


def test_sweep_cli_dry_run_report_and_rerun_skips(tmp_path, capsys):
    f = _write(tmp_path, "cli", "  method: [w8a8, w4a8]\n")
    db = str(tmp_path / "c.db")
    assert main(["sweep", str(f), "--store", db, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("pending") == 2
    assert main(["sweep", str(f), "--store", db, "--no-progress", "--threads", "1", "--json"]) == 0
    import json

    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["ran"] == 2 and rec["skipped"] == 0 and Path(rec["report"]).is_file()
    assert main(["sweep", str(f), "--store", db, "--no-progress", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["ran"] == 0 and rec["skipped"] == 2
    assert main(["report", "cli", "--store", db, "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "w8a8:mse" in html and "w4a8:mse" in html and "sweep cli (2 cells)" in html
    assert main(["report", "nosuch", "--store", db]) == 2


def test_cells_differing_in_hyper_parameters_stay_distinct_and_latency_is_measured(tmp_path, capsys):
    f = tmp_path / "hyp.yaml"
    f.write_text(f"name: hyp\nkind: ptq\nout: {tmp_path / 'out'}\nmodel: lenet\ndata: '{SYN}'\npretrain_epochs: 1\n"
                 "calib_size: 24\nbatch_sizes: [1, 2]\nmin_time_s: 0.01\ntopk: 3\n"
                 "cells:\n  - {pretrain_lr: 0.05}\n  - {pretrain_lr: 0.01}\n")
    db = tmp_path / "h.db"
    run_sweep(load_sweep(f), store_path=str(db), progress=False, threads=1, log=lambda m: None)
    with ResultStore(db) as store:
        for c in store.sweep_cells("hyp").values():
            lat = store.query(run_id=c["run_id"], metric="latency_median_ms")
            assert {(r["method"], r["engine"], r["batch"]) for r in lat} == {
                ("fp32", "torch", 1), ("fp32", "torch", 2), ("w8a8:mse", "torch-int8", 1),
                ("w8a8:mse", "torch-int8", 2)}
            metrics = {(r["method"], r["metric"]) for r in store.query(run_id=c["run_id"])}
            assert {("fp32", "train_top1"), ("w8a8:mse", "train_top1"), ("w8a8:mse", "top3"),
                    ("w8a8:mse", "train_top3")} <= metrics  # train and test, top-k as asked
    assert main(["report", "hyp", "--store", str(db), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    for lr in ("0.05", "0.01"):  # both cells keep their own rows, named by what differs
        assert f"| lenet [pretrain_lr={lr}] | fp32 | torch |" in md
        assert f"| lenet [pretrain_lr={lr}] | w8a8:mse | torch |" in md


def test_cells_with_the_same_training_share_one_trained_model(tmp_path):
    f = _write(tmp_path, "share", "  method: [w8a8, w4a8]\n")
    db = tmp_path / "s.db"
    run_sweep(load_sweep(f), store_path=str(db), progress=False, threads=1, log=lambda m: None)
    cached = list((tmp_path / "out" / "share" / "_pretrained").glob("*.pt"))
    assert len(cached) == 1  # two cells, one training
    fp32 = []
    with ResultStore(db) as store:
        for c in store.sweep_cells("share").values():
            rows = store.query(run_id=c["run_id"], method="fp32")
            fp32.append({(r["metric"], str(r["extra"].get("epoch"))): r["value"] for r in rows
                         if r["metric"].startswith("epoch.") or r["metric"] in ("top1", "loss", "train_time_s")})
    assert fp32[0] == fp32[1] and ("train_time_s", "None") in fp32[0]  # same model, same history rows
    files = sorted((tmp_path / "out" / "share").glob("*/model_fp32.pt"))
    assert len(files) == 2 and files[0].stat().st_ino == files[1].stat().st_ino  # its FP32 file stored once
    # a different training setting trains anew, and its different FP32 file is its own
    g = _write(tmp_path, "share", "  method: [w8a8]\n", extra="pretrain_lr: 0.01\n")
    run_sweep(load_sweep(g), store_path=str(db), progress=False, threads=1, log=lambda m: None)
    assert len(list((tmp_path / "out" / "share" / "_pretrained").glob("*.pt"))) == 2
    inodes = [f.stat().st_ino for f in (tmp_path / "out" / "share").glob("*/model_fp32.pt")]
    assert len(inodes) == 3 and len(set(inodes)) == 2
    assert files[0].read_bytes() == files[1].read_bytes()  # the linked pair kept its bytes


def test_pool_executor_matches_inprocess(tmp_path):
    f = _write(tmp_path, "pool", "  method: [w8a8, w4a8]\n")
    run_sweep(load_sweep(f), store_path=str(tmp_path / "a.db"), progress=False, threads=1, log=lambda m: None)
    run_sweep(load_sweep(f), store_path=str(tmp_path / "b.db"), executor="pool", workers=2, progress=False,
              threads=1, log=lambda m: None)
    _same(_cells(tmp_path / "a.db", "pool"), _cells(tmp_path / "b.db", "pool"))


def test_ray_executor_matches_inprocess(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'quantbench[ray]')")
    f = _write(tmp_path, "ray4", "  method: [w8a8:minmax, w4a8:mse]\n")  # two cells: one per worker
    run_sweep(load_sweep(f), store_path=str(tmp_path / "a.db"), progress=False, threads=1, log=lambda m: None)
    out = run_sweep(load_sweep(f), store_path=str(tmp_path / "r.db"), executor="ray", workers=2, progress=False,
                    threads=1, log=lambda m: None)
    assert len(out.ran) == 2 and not out.failed
    _same(_cells(tmp_path / "a.db", "ray4"), _cells(tmp_path / "r.db", "ray4"))


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_file_parses(path):
    from quantbench.experiments.files import read_experiment_file
    from quantbench.experiments.layer import config_for

    f = read_experiment_file(path)
    if f.is_sweep:
        cells = expand(load_sweep(path))  # validates every cell's config
        assert cells
    else:
        assert config_for(f.kind, f.values)


def test_split_and_mixed_run_as_sweep_cells(tmp_path):
    split = tmp_path / "sp.yaml"
    split.write_text(f"name: sp\nkind: split\nout: {tmp_path / 'out'}\nmodel: resnet20\n"
                     "data: 'synthetic:n=96,shape=3x32x32,classes=10,seed=0'\ncalib_size: 32\nqbins: [4]\n"
                     "companding: [none]\ngrid:\n  splits: [[1], [3]]\n")
    mixed = tmp_path / "mx.yaml"
    mixed.write_text(f"name: mx\nkind: mixed\nout: {tmp_path / 'out'}\nmodel: lenet\ndata: '{SYN}'\n"
                     "pretrain_epochs: 2\ncalib_size: 48\nbits: [2, 4, 8]\ngrid:\n  avg_bits: [3, 6]\n")
    db = tmp_path / "m.db"
    for f in (split, mixed):
        out = run_sweep(load_sweep(f), store_path=str(db), progress=False, threads=1, log=lambda m: None)
        assert len(out.ran) == 2 and not out.failed, out.failed
        again = run_sweep(load_sweep(f), store_path=str(db), progress=False, threads=1, log=lambda m: None)
        assert again.ran == [] and len(again.skipped) == 2  # resumable like any sweep
    with ResultStore(db) as store:
        splits = {r["extra"]["split"] for c in store.sweep_cells("sp").values()
                  for r in store.query(run_id=c["run_id"], metric="split.top1")}
        assert splits == {1, 3}
        bits = sorted(r["value"] for c in store.sweep_cells("mx").values()
                      for r in store.query(run_id=c["run_id"], metric="average_weight_bits"))
        assert len(bits) == 2 and bits[0] <= 3 < bits[1] <= 6
