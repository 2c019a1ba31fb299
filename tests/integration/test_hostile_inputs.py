"""Hostile and careless inputs: one line, exit 2, nothing stored changes; killed runs never stay 'running'."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from quantbench.cli import main
from quantbench.store import ResultStore

SYN = "synthetic:n=120,shape=1x8x8,classes=4,seed=0"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _one_line_exit_2(capsys, argv: list[str], needle: str) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err
    return err


@pytest.fixture
def store(tmp_path, capsys):
    """A store with one finished eval run in it, and its bytes before the test."""
    db = tmp_path / "q.db"
    assert main(["eval", "--model", "lenet", "--data", SYN, "--store", str(db), "--no-progress", "--json"]) == 0
    capsys.readouterr()
    return db


def test_results_export_never_overwrites_a_database(store, tmp_path, capsys):
    before = store.read_bytes()
    _one_line_exit_2(capsys, ["results", "--store", str(store), "--format", "csv", "--out", str(store)],
                     "is a SQLite database; refusing to overwrite it")
    assert store.read_bytes() == before
    _one_line_exit_2(capsys, ["results", "--store", str(store), "--out", str(tmp_path / "nodir" / "x.csv"),
                              "--format", "csv"], "does not exist")
    _one_line_exit_2(capsys, ["results", "--store", str(store), "--run", "nosuch"], "no run matching")


BAD_RESULTS = [
    ({"records": [{"scheme": "fp32", "batch": 1, "median_ms": float("nan"), "p90_ms": 1.0}]}, "median_ms"),
    ({"records": [{"scheme": "fp32", "batch": 1, "median_ms": float("inf"), "p90_ms": 1.0}]}, "median_ms"),
    ({"records": [{"scheme": "fp32", "batch": 1, "median_ms": -1.0, "p90_ms": 1.0}]}, "median_ms"),
    ({"records": [{"scheme": "fp32", "batch": -1, "median_ms": 1.0, "p90_ms": 1.0}]}, "batch"),
    ({"records": [{"scheme": "fp32", "batch": 1.5, "median_ms": 1.0, "p90_ms": 1.0}]}, "batch"),
    ({"records": [{"scheme": 3, "batch": 1, "median_ms": 1.0, "p90_ms": 1.0}]}, "scheme"),
    ({"records": [{"batch": 1, "median_ms": 1.0, "p90_ms": 1.0}]}, "misses 'scheme'"),
    ({"records": "many"}, "records: expected a list"),
    ({"records": [7]}, "records[0]: expected a mapping"),
    ({"bundle": {"model": "../../../etc", "input_shape": [1, 8, 8], "models": []}}, None),  # stored, contained
    ({"bundle": {"model": "m", "input_shape": [1, -8, 8], "models": []}}, "input_shape"),
    ({"bundle": {"model": "m", "input_shape": [1, 8, 8], "models": [{"scheme": "fp32", "macs": -5}]}}, "macs"),
    ({"bundle": "x"}, "bundle: expected a mapping"),
    ({"device": ""}, "device"),
    ({"device": "a\nb"}, "device"),
    ({"checks": [{"scheme": "fp32", "ok": "yes"}]}, "checks[0].ok"),
    ({"checks": [{"scheme": "fp32", "ok": True, "cosine": float("nan")}]}, "cosine"),
    ({"facts": []}, "facts: expected a mapping"),
    ({"ceilings": []}, "ceilings: expected a mapping"),
    ({"ceilings": {"runtime": "onnxruntime 1", "fp32": {"gmacs_per_s": float("inf"), "kernel": "k", "op": "o"}}},
     "ceilings.fp32.gmacs_per_s"),
]


def _results(tmp_path: Path, change: dict) -> Path:
    doc = {"format": "quantbench-device-results-v1", "device": "edge",
           "bundle": {"model": "lenet", "input_shape": [1, 8, 8], "models": [{"scheme": "fp32", "macs": 1000}]},
           "facts": {}, "checks": [{"scheme": "fp32", "ok": True, "cosine": 1.0}],
           "records": [{"scheme": "fp32", "batch": 1, "median_ms": 1.0, "p90_ms": 1.2}]}
    doc.update(change)
    f = tmp_path / "results.json"
    f.write_text(json.dumps(doc, allow_nan=True))
    return f


@pytest.mark.parametrize("change, needle", BAD_RESULTS)
def test_device_results_are_validated_before_anything_is_stored(store, tmp_path, capsys, change, needle):
    before = store.read_bytes()
    f = _results(tmp_path, change)
    if needle is None:  # a hostile model name: stored as a name, every derived file stays in its folder
        assert main(["import", str(f), "--store", str(store), "--json"]) == 0
        report = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["report"])
        assert report.parent.parent == store.parent and report.parent.name == "devices-etc"
        return
    _one_line_exit_2(capsys, ["import", str(f), "--store", str(store)], needle)
    assert store.read_bytes() == before
    good = _results(tmp_path, {})  # the store still takes the next, valid file
    assert main(["import", str(good), "--store", str(store)]) == 0


def test_nonfinite_checkpoint_is_refused_and_nothing_stored(store, tmp_path, capsys):
    from quantbench.models import build_model

    sd = build_model("lenet", num_classes=4).state_dict()
    sd[next(k for k in sd if k.endswith("weight"))][0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    before = store.read_bytes()
    for verb, extra in (("eval", []), ("quantize", ["--calib-size", "20"]), ("split", ["--calib-size", "20"]),
                        ("bench", ["--engines", "torch", "--num-classes", "4"])):
        _one_line_exit_2(capsys, [verb, "--model", "lenet", "--checkpoint", str(tmp_path / "nan.pt"), "--data", SYN,
                                  "--store", str(store), *extra] if verb != "bench" else
                         [verb, "--model", "lenet", "--checkpoint", str(tmp_path / "nan.pt"), "--store", str(store),
                          *extra], "holds NaN or Inf values")
    assert store.read_bytes() == before


def _qbm(tmp_path: Path, capsys) -> Path:
    assert main(["quantize", "--model", "lenet", "--data", SYN, "--calib-size", "40", "--store", str(tmp_path / "q.db"),
                 "--out", str(tmp_path / "q"), "--no-progress", "--json"]) == 0
    return Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["quant"]["artifact"])


def test_tampered_qbm_files_are_refused(tmp_path, capsys):
    from quantbench.quant.artifact import PackedTensor, save_artifact
    from quantbench.quant.artifact_lean import load_lean
    from quantbench.quant.save import load_quantized

    qbm = _qbm(tmp_path, capsys)  # a lean (format-2) file; its tensors are rewritten as format 1, which still loads
    head, flat = load_lean(qbm)
    meta, state = head["meta"], load_quantized(qbm).state_dict()
    tensors = {k: t.reshape(state[k].shape) for k, t in zip(state, flat, strict=True)}
    packed = {k: e for k, e in zip(state, head["tensors"], strict=True) if e["enc"] == "packed"}

    def rewrite(name: str, meta2: dict, tensors2: dict) -> Path:
        out = tmp_path / name
        save_artifact(out, meta2, {k: PackedTensor(v, bits=packed[k]["bits"], signed=packed[k]["signed"])
                                   if k in packed else v for k, v in tensors2.items()})
        return out

    scale_key = next(k for k in tensors if k.endswith("scale") and tensors[k].numel() > 0)
    nan_scale = {**tensors, scale_key: torch.full_like(tensors[scale_key], float("nan"))}
    bits = json.loads(json.dumps(meta))
    bits["plan"]["default"]["weight"]["bits"] = 4
    empty = json.loads(json.dumps(meta))
    empty["plan"] = {"scheme": "fp32", "default": {"weight": None, "act": None}, "overrides": {}}
    truncated = tmp_path / "truncated.qbm"
    truncated.write_bytes(qbm.read_bytes()[:-100])
    cases = [(rewrite("nan.qbm", meta, nan_scale), "NaN or Inf"), (rewrite("bits.qbm", bits, tensors), "bits"),
             (rewrite("empty.qbm", empty, tensors), "quantizes nothing"), (truncated, "truncated")]
    for path, needle in cases:
        _one_line_exit_2(capsys, ["bench", "--model", "lenet", "--quantized", str(path), "--engines", "torch",
                                  "--no-store", "--min-time-s", "0.01", "--no-progress"], needle)
        _one_line_exit_2(capsys, ["export", str(path), "--out", str(tmp_path / "x"), "--formats", "onnx"], needle)


def test_bundle_runner_refuses_malformed_manifests_and_escaping_paths(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bundle", "--model", "lenet", "--out", str(out), "--variants", "fp32", "--formats", "onnx",
                 "--calib", "random", "--no-zip", "--no-progress"]) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    (tmp_path / "outside.onnx").write_bytes((out / manifest["models"][0]["file"]).read_bytes())
    mutations = [
        ("escape", lambda m: m["models"][0].update(file="../outside.onnx"), "inside the bundle folder"),
        ("absolute", lambda m: m["models"][0].update(file=str(tmp_path / "outside.onnx")), "inside the bundle"),
        ("no models", lambda m: m.update(models=[]), "models: expected a non-empty list"),
        ("models str", lambda m: m.update(models="x"), "models: expected a non-empty list"),
        ("shape", lambda m: m.update(input_shape=[1, 8]), "input_shape"),
        ("batches", lambda m: m.update(batch_sizes=[0]), "batch_sizes"),
        ("sha", lambda m: m["models"][0].update(sha256="zz"), "SHA-256"),
        ("format", lambda m: m["models"][0].update(format="exe"), "onnx or tflite"),
        ("samples", lambda m: m.update(samples=None), "samples: expected a mapping"),
        ("not a dict", lambda m: m.clear(), "format None"),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    for name, mutate, needle in mutations:
        m = json.loads(json.dumps(manifest))
        mutate(m)
        (out / "manifest.json").write_text(json.dumps(m))
        r = subprocess.run([sys.executable, str(out / "run_bundle.py"), "--device", "x", "--out",
                            str(tmp_path / "r.json"), "--min-time", "0", "--min-iters", "1", "--warmup", "0"],
                           capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert r.returncode == 2, (name, r.stderr)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, name
        assert not (tmp_path / "r.json").exists()


def test_bounded_parsing_of_yaml_data_files_and_sizes(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    lines = ["kind: ptq", "hyper:", "  a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\ngrid: {method: [w8a8]}\n")
    t0 = time.perf_counter()
    _one_line_exit_2(capsys, ["sweep", str(bomb), "--dry-run", "--store", str(tmp_path / "s.db")], "bomb.yaml")
    _one_line_exit_2(capsys, ["quantize", "--config", str(bomb)], "bomb.yaml")
    deep = tmp_path / "deep.yaml"
    deep.write_text("kind: ptq\nhyper: " + "[" * 5000 + "]" * 5000 + "\n")
    _one_line_exit_2(capsys, ["quantize", "--config", str(deep)], "deep.yaml")
    assert time.perf_counter() - t0 < 20
    cifar = tmp_path / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        # a pickle that declares a 10^13-byte string in a 20-byte file
        (cifar / name).write_bytes(b"\x80\x04\x8e" + (10**13).to_bytes(8, "little") + b"abc")
    _one_line_exit_2(capsys, ["eval", "--model", "resnet20", "--data", f"cifar10:{cifar.parent}", "--no-store"],
                     "not a CIFAR python pickle")
    _one_line_exit_2(capsys, ["eval", "--data", "digits", "--input-shape", "1x20000x20000", "--no-store"],
                     "too large")
    _one_line_exit_2(capsys, ["eval", "--data", "digits", "--input-shape", "1x8000x8000", "--no-store",
                              "--no-progress"], "this machine can spare")


def test_html_and_markdown_reports_escape_hostile_strings(tmp_path, capsys):
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    assert main(["eval", "--model", "lenet", "--data", SYN, "--name", evil, "--store", str(tmp_path / "q.db"),
                 "--no-progress", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    html = Path(rec["report"]).read_text()
    md = Path(rec["report"]).with_name("report.md").read_text()
    for text in (html, md):
        assert "<script>" not in text and "<img src=x" not in text and "&lt;script&gt;" in text


def _status(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("SELECT status FROM runs")]


def test_killed_runs_never_stay_running(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    # the FP32 rows are committed first, then AdaRound runs for minutes: killed in the middle of a stored run
    cmd = [sys.executable, "-m", "quantbench", "quantize", "--model", "lenet", "--data", "digits", "--method",
           "w4a8:adaround", "--adaround-iters", "1000000", "--calib-size", "64", "--no-progress"]
    for sig, code, status in ((signal.SIGTERM, 143, "interrupted"), (signal.SIGKILL, -9, "interrupted")):
        db = tmp_path / f"{sig.name}.db"
        proc = subprocess.Popen([*cmd, "--store", str(db)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and not (db.exists() and _rows(db)):
            time.sleep(0.2)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == code
        with ResultStore(db) as store:  # the next open of the store settles the run
            (run,) = store.runs()
            assert run["status"] == status, (sig, run["status"])
            assert store.query() == [] and store.query(unfinished=True)


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_pool_workers_exit_with_their_driver(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(f"name: s\nkind: train\nmodel: lenet\ndata: digits\nout: {tmp_path / 'o'}\n"
                 "grid:\n  epochs: [300, 301]\n")
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-m", "quantbench", "sweep", str(f), "--executor", "pool", "--workers",
                             "2", "--store", str(tmp_path / "s.db"), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 90, []
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.5)
        workers = [c for c in _children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) == 2, "the pool never started"
    proc.kill()
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.5)
    assert not any(_alive(w) for w in workers)


def test_same_seed_same_numbers(tmp_path, capsys):
    """Two identical commands give identical numbers (timings aside), for every verb that trains or samples."""
    common = ["--data", SYN, "--no-progress", "--json", "--no-store"]
    commands = [
        ["train", "--model", "lenet", "--epochs", "2", *common],
        ["run", "--model", "lenet", "--epochs", "1", "--methods", "w8a8:mse,w4a8:adaround", "--adaround-iters", "20",
         "--qat", "w4a4", "--qat-epochs", "1", "--batch-sizes", "1", "--min-time-s", "0.01", "--calib-size", "32",
         *common],
        ["quantize", "--model", "lenet", "--pretrain-epochs", "1", "--calib-size", "32", *common],
        ["qat", "--model", "lenet", "--epochs", "1", "--calib-size", "32", *common],
        ["mixed", "--model", "lenet", "--avg-bits", "4", "--calib-size", "32", *common],
        ["split", "--model", "lenet", "--splits", "2", "--qbins", "4", "--companding", "none", "--noise-train", "1",
         "--calib-size", "32", *common],
    ]

    def numbers(obj: object, path: str = "") -> dict[str, float]:
        out: dict[str, float] = {}
        if isinstance(obj, dict):
            for k, v in obj.items():
                out.update(numbers(v, f"{path}.{k}"))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                out.update(numbers(v, f"{path}[{i}]"))
        elif isinstance(obj, float) and not any(t in path for t in ("time", "_s", "seconds", "latency", "ms",
                                                                     "throughput", "ips", "gmacs")):
            out[path] = obj
        return out

    for argv in commands:
        seen = []
        for _ in range(2):
            assert main(argv) == 0, argv
            rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            rec.pop("results", None)
            seen.append(numbers(rec))
        assert seen[0].keys() == seen[1].keys() and seen[0], argv[0]
        for k, v in seen[0].items():
            w = seen[1][k]
            assert v == w or (math.isnan(v) and math.isnan(w)), (argv[0], k, v, w)
    # and the seed is stored with every run
    assert main(["eval", "--model", "lenet", "--data", SYN, "--seed", "7", "--store", str(tmp_path / "q.db"),
                 "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with ResultStore(tmp_path / "q.db") as store:
        assert store.run(rec["run_id"])["config"]["seed"] == 7


def test_broken_pipe_is_quiet(store):
    env = {**os.environ, "PYTHONPATH": SRC}
    r = subprocess.run(f"{sys.executable} -m quantbench results --store {store} | head -1", shell=True,
                       capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr
