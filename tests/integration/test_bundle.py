"""Device bundles: build, run in a fresh numpy+onnxruntime-only environment, import, compare devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'quantbench[onnx]')")

from quantbench.cli import main  # noqa: E402
from quantbench.store import ResultStore  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "lenet"
    assert main(["bundle", "--model", "lenet", "--out", str(out), "--batch-sizes", "1,4", "--calib-size", "16"]) == 0
    return out


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory):
    """A new virtual environment with ONLY numpy and onnxruntime (what a small device can install)."""
    d = tmp_path_factory.mktemp("devenv") / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(d)
    py = d / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy", "onnxruntime"], capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot install numpy + onnxruntime into a fresh venv here: {r.stderr.strip()[-300:]}")
    probe = subprocess.run([str(py), "-c", "import torch"], capture_output=True)
    assert probe.returncode != 0, "the device environment must not have torch"
    return py


def _run(py: Path, bundle: Path, device: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(py), str(bundle / "run_bundle.py"), "--device", device, "--out", str(out),
                           "--min-time", "0", "--min-iters", "3", "--warmup", "1", *extra],
                          capture_output=True, text=True, timeout=600, env=env, cwd=bundle.parent)


def test_bundle_contents(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [m["scheme"] for m in manifest["models"]] == ["fp32", "dynamic", "w8a8"]
    assert all((bundle / m["file"]).is_file() and (bundle / m["expected"]).is_file() for m in manifest["models"])
    assert manifest["models"][0]["macs"] > 0 and manifest["models"][0]["flops"] == 2 * manifest["models"][0]["macs"]
    assert (bundle / "run_bundle.py").is_file() and Path(str(bundle) + ".zip").is_file()
    assert "import quantbench" not in (bundle / "run_bundle.py").read_text()


def test_runner_in_fresh_env_then_import_shows_two_devices(tmp_path, bundle, fresh_python):
    r = _run(fresh_python, bundle, "edge-venv", tmp_path / "edge.json")
    assert r.returncode == 0, r.stderr
    assert "all output checks passed" in r.stdout
    res = json.loads((tmp_path / "edge.json").read_text())
    assert res["facts"]["packages"]["onnxruntime"] and {c["scheme"] for c in res["checks"]} == {"fp32", "dynamic",
                                                                                               "w8a8"}
    assert sorted({(x["scheme"], x["batch"]) for x in res["records"]}) == sorted(
        (s, b) for s in ("fp32", "dynamic", "w8a8") for b in (1, 4))
    # a second "device": the same runner with this environment's interpreter
    r2 = _run(Path(sys.executable), bundle, "host", tmp_path / "host.json")
    assert r2.returncode == 0, r2.stderr
    db = str(tmp_path / "d.db")
    assert main(["import", str(tmp_path / "edge.json"), "--store", db, "--profile-gmacs", "20",
                 "--out", str(tmp_path / "rep")]) == 0
    assert main(["import", str(tmp_path / "host.json"), "--store", db, "--out", str(tmp_path / "rep"), "--json"]) == 0
    with ResultStore(db) as store:
        runs = store.runs(kind="device")
        assert {r["config"]["device"] for r in runs} == {"edge-venv", "host"}
        est = store.query(metric="estimated_latency_ms")
    assert est and all(r["engine"] == "onnxruntime@edge-venv" for r in est)
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Devices side by side" in html and "edge-venv" in html and "host" in html
    assert "lenet on 2 device(s)" in html


def test_tampered_model_is_refused_before_it_runs(tmp_path, bundle):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    model = copy / "lenet_w8a8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    r = _run(Path(sys.executable), copy, "x", tmp_path / "r.json")
    assert r.returncode == 2
    assert "lenet_w8a8.onnx: checksum mismatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not a device results file"),
    ('{"format": "quantbench-device-results-v1", "device": "d"}', "missing key 'bundle'"),
])
def test_import_rejects_bad_files(tmp_path, capsys, content, needle):
    f = tmp_path / "r.json"
    f.write_text(content)
    assert main(["import", str(f), "--store", str(tmp_path / "d.db")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_bundle_rejects_bad_input(tmp_path, bundle, capsys):
    assert main(["bundle", "--model", "lenet", "--out", str(tmp_path / "x"), "--schemes", "w4a8"]) == 2
    assert "cannot be deployed as integer ONNX" in capsys.readouterr().err
    assert main(["bundle", "--model", "lenet", "--out", str(bundle)]) == 2
    assert "not empty" in capsys.readouterr().err
