"""Device bundles: build, run in fresh numpy+onnxruntime-only and numpy+ai-edge-litert-only environments,
import, compare devices."""

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
from quantbench.engines import get_engine  # noqa: E402
from quantbench.store import ResultStore  # noqa: E402

HAS_LITERT, LITERT_REASON = get_engine("litert").available()
needs_litert = pytest.mark.skipif(not HAS_LITERT, reason=f"LiteRT engine: {LITERT_REASON}")
SCHEMES = ("fp32", "dynamic", "w8a8:mse")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "lenet"
    assert main(["bundle", "--model", "lenet", "--out", str(out), "--batch-sizes", "1,4", "--calib-size", "16",
                 "--calib", "random"]) == 0
    return out


def _fresh_venv(tmp_path_factory, name: str, packages: list[str], absent: list[str]) -> Path:
    """A new virtual environment with ONLY ``packages`` (what a small device can install)."""
    d = tmp_path_factory.mktemp(name) / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(d)
    py = d / "bin" / "python"
    # --no-compile: the same packages, without byte-compiling every module up front (most of the install time)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-compile", *packages], capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot install {' + '.join(packages)} into a fresh venv here: {r.stderr.strip()[-300:]}")
    for mod in absent:
        probe = subprocess.run([str(py), "-c", f"import {mod}"], capture_output=True)
        assert probe.returncode != 0, f"the device environment must not have {mod}"
    return py


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory):
    return _fresh_venv(tmp_path_factory, "devenv", ["numpy", "onnxruntime"], ["torch", "ai_edge_litert"])


@pytest.fixture(scope="module")
def litert_python(tmp_path_factory):
    return _fresh_venv(tmp_path_factory, "litertenv", ["numpy", "ai-edge-litert"], ["torch", "onnxruntime"])


def _run(py: Path, bundle: Path, device: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(py), str(bundle / "run_bundle.py"), "--device", device, "--out", str(out),
                           "--min-time", "0", "--min-iters", "3", "--warmup", "1", *extra],
                          capture_output=True, text=True, timeout=600, env=env, cwd=bundle.parent)


def test_bundle_contents(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    onnx = [m for m in manifest["models"] if m["format"] == "onnx"]
    assert [m["scheme"] for m in onnx] == list(SCHEMES) and {m["engine"] for m in onnx} == {"onnxruntime"}
    assert all((bundle / m["file"]).is_file() and (bundle / m["expected"]).is_file() for m in manifest["models"])
    assert onnx[0]["macs"] > 0 and onnx[0]["flops"] == 2 * onnx[0]["macs"]
    assert (bundle / "run_bundle.py").is_file() and Path(str(bundle) + ".zip").is_file()
    assert "import quantbench" not in (bundle / "run_bundle.py").read_text()
    tflite = [m for m in manifest["models"] if m["format"] == "tflite"]
    if HAS_LITERT:  # .tflite files of the same schemes, one per batch size (a converted graph has a fixed batch)
        assert manifest["formats"] == ["onnx", "tflite"]
        assert [m["scheme"] for m in tflite] == list(SCHEMES) and {m["engine"] for m in tflite} == {"litert"}
        for m in tflite:
            assert sorted(m["batch_files"], key=int) == ["1", "4"] and m["file"] == m["batch_files"]["1"]["file"]
            assert all((bundle / f["file"]).stat().st_size == f["bytes"] for f in m["batch_files"].values())
        sizes = {m["scheme"]: m["bytes"] for m in tflite}
        assert sizes["w8a8:mse"] < sizes["fp32"] / 2.5  # int8 weights really stored as int8
    else:
        assert manifest["formats"] == ["onnx"] and not tflite


def test_runner_in_fresh_env_then_import_shows_two_devices(tmp_path, bundle, fresh_python):
    r = _run(fresh_python, bundle, "edge-venv", tmp_path / "edge.json")
    assert r.returncode == 0, r.stderr
    assert "all output checks passed" in r.stdout
    res = json.loads((tmp_path / "edge.json").read_text())
    assert res["facts"]["packages"]["onnxruntime"] and {c["scheme"] for c in res["checks"]} == set(SCHEMES)
    assert sorted({(x["scheme"], x["batch"]) for x in res["records"]}) == sorted(
        (s, b) for s in SCHEMES for b in (1, 4))
    assert {x["engine"] for x in res["records"]} == {"onnxruntime"} and res["engines"] == ["onnxruntime"]
    if HAS_LITERT:  # no LiteRT runtime in that environment: the .tflite models are skipped, with the reason
        assert sorted(x["scheme"] for x in res["skipped"]) == sorted(SCHEMES)
        assert all("ai-edge-litert" in x["reason"] for x in res["skipped"]) and "skipped w8a8:mse (tflite)" in r.stdout
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
        host_engines = {r["engine"] for r in store.query(metric="latency_median_ms") if r["extra"]["device"] == "host"}
    # edge-venv: the rate given (--profile-gmacs); host: its own measured GEMM ceilings (the runner measured them)
    assert {(r["engine"].split("@")[1], r["extra"]["profile_source"]) for r in est} == {
        ("edge-venv", "given"), ("host", "measured")}
    assert all(r["extra"]["profile_gmacs"] == 20 for r in est if r["engine"] == "onnxruntime@edge-venv")
    assert res["ceilings"]["fp32"]["gmacs_per_s"] > 0 and res["ceilings"]["runtime"].startswith("onnxruntime")
    assert host_engines == ({"onnxruntime@host", "litert@host"} if HAS_LITERT else {"onnxruntime@host"})
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Devices side by side" in html and "edge-venv" in html and "host" in html
    assert "lenet on 2 device(s)" in html
    assert "id='device_latency'" in html and "the gap is the estimate" in html


def test_device_ceilings_go_from_the_runner_through_import_to_the_split_latency_model(tmp_path, bundle, capsys):
    """run_bundle.py measures the device's FP32/INT8 GEMM ceilings; import stores them; split --edge NAME uses them."""
    from quantbench.splitting.latency import parse_profile

    assert "import quantbench" not in (bundle / "device_gemm.py").read_text()  # copied beside the runner
    r = _run(Path(sys.executable), bundle, "my-board", tmp_path / "r.json", "--ceiling-time", "0.05", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "GEMM ceilings: fp32" in r.stdout and "int8/fp32" in r.stdout
    c = json.loads((tmp_path / "r.json").read_text())["ceilings"]
    assert c["threads"] == 1 and c["fp32"]["gmacs_per_s"] > 0 and c["int8"]["gmacs_per_s"] > 0
    assert {k["precision"] for k in c["kernels"]} == {"fp32", "int8"} and "2 x gmacs_per_s" in c["convention"]
    db = tmp_path / "d.db"
    assert main(["import", str(tmp_path / "r.json"), "--store", str(db), "--out", str(tmp_path / "rep")]) == 0
    with ResultStore(db) as store:
        peaks = {r["extra"]["precision"]: r for r in store.query(metric="device_gemm_gmacs_per_s")}
        est = store.query(metric="estimated_latency_ms")
    assert {p: row["value"] for p, row in peaks.items()} == pytest.approx(
        {p: c[p]["gmacs_per_s"] for p in ("fp32", "int8")})
    assert all(row["engine"] == "onnxruntime@my-board" and row["extra"]["source"] == "measured" for row in peaks.values())
    # each scheme's estimate divides by the ceiling of its precision, labelled "measured"
    assert {(e["method"] == "fp32", e["extra"]["profile_gmacs"], e["extra"]["profile_source"]) for e in est} == {
        (True, c["fp32"]["gmacs_per_s"], "measured"), (False, c["int8"]["gmacs_per_s"], "measured")}
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "GEMM ceilings (measured on each device)" in html and " GMAC/s (measured)</td>" in html
    from test_report_browser import _check_in_browser, _chromium  # the same probe as every other report kind

    if _chromium() is not None:  # the devices report opens with its answer and every figure decodes
        (tmp_path / "browser").mkdir()
        _check_in_browser(tmp_path / "rep" / "report.html", tmp_path / "browser", "report_devices.png", min_images=1)
    edge = parse_profile("my-board", db)
    assert (edge.source, edge.gflops) == ("measured", pytest.approx(2 * c["fp32"]["gmacs_per_s"]))
    assert parse_profile("raspberry-pi-4b", db).source == "published" and parse_profile("x=3", db).source == "given"
    syn = "synthetic:n=60,shape=3x32x32,classes=10,seed=0"
    split = ["split", "--model", "resnet20", "--data", syn, "--calib-size", "20", "--splits", "1", "--qbins", "4",
             "--companding", "none", "--store", str(db), "--out", str(tmp_path / "s"), "--no-progress"]
    assert main([*split, "--edge", "my-board"]) == 0
    assert "latency model: edge my-board (measured" in capsys.readouterr().out
    with ResultStore(db) as store:
        lat = store.query(metric="split.latency_s")
    assert lat and {(r["extra"]["edge_source"], r["extra"]["cloud_source"]) for r in lat} == {("measured", "published")}
    assert main([*split, "--edge", "other-board"]) == 2  # neither imported nor published: one line naming both kinds
    err = capsys.readouterr().err.strip()
    assert "device profile 'other-board'" in err and "my-board" in err and len(err.splitlines()) == 1


@needs_litert
def test_litert_only_device_runs_the_tflite_models(tmp_path, bundle, litert_python):
    """A device with numpy + ai-edge-litert and no onnxruntime (a phone-class board): .tflite only."""
    r = _run(litert_python, bundle, "litert-venv", tmp_path / "lite.json")
    assert r.returncode == 0, r.stderr + r.stdout
    res = json.loads((tmp_path / "lite.json").read_text())
    assert res["engines"] == ["litert"] and res["facts"]["packages"]["ai-edge-litert"]
    assert {(c["scheme"], c["format"]) for c in res["checks"]} == {(s, "tflite") for s in SCHEMES}
    assert all(c["ok"] for c in res["checks"]), res["checks"]  # same outputs as LiteRT gave where the bundle was built
    assert sorted({(x["scheme"], x["batch"]) for x in res["records"]}) == sorted((s, b) for s in SCHEMES for b in (1, 4))
    assert all(x["reason"].startswith("onnxruntime is not installed") for x in res["skipped"])
    db = str(tmp_path / "d.db")
    assert main(["import", str(tmp_path / "lite.json"), "--store", db, "--profile-gmacs", "20",
                 "--out", str(tmp_path / "rep")]) == 0
    with ResultStore(db) as store:
        speed = store.query(metric="device_speedup_vs_fp32")
    assert {r["engine"] for r in speed} == {"litert@litert-venv"}
    assert {r["method"] for r in speed} == set(SCHEMES)
    # asking for a format the bundle does not hold is a one-line error
    r = _run(litert_python, bundle, "x", tmp_path / "x.json", "--formats", "openvino")
    assert r.returncode == 2 and "this bundle holds onnx, tflite" in r.stderr


def test_tampered_model_is_refused_before_it_runs(tmp_path, bundle):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    model = copy / "lenet_int8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    r = _run(Path(sys.executable), copy, "x", tmp_path / "r.json")
    assert r.returncode == 2
    assert "lenet_int8.onnx: checksum mismatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


@needs_litert
def test_tampered_tflite_batch_file_is_refused(tmp_path, bundle):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    model = copy / "lenet_int8_b4.tflite"  # a timing-only file, not the one the output check loads
    data = bytearray(model.read_bytes())
    data[-10] ^= 0x01
    model.write_bytes(bytes(data))
    r = _run(Path(sys.executable), copy, "x", tmp_path / "r.json")
    assert r.returncode == 2
    assert "lenet_int8_b4.tflite: checksum mismatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
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
    assert main(["bundle", "--model", "lenet", "--out", str(tmp_path / "x"), "--method", "w8a8:dynamicz"]) == 2
    assert "unknown algorithm" in capsys.readouterr().err
    assert main(["bundle", "--model", "lenet", "--out", str(tmp_path / "x"), "--method", "w4a16",
                 "--calib", "random"]) == 2
    assert "cannot be deployed as integer ONNX" in capsys.readouterr().err
    assert main(["bundle", "--model", "lenet", "--out", str(bundle), "--calib", "random"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["bundle", "--model", "lenet", "--out", str(tmp_path / "y"), "--formats", "onnx,coreml"]) == 2
    assert "formats must be one of onnx, tflite" in capsys.readouterr().err
    # int8 from random images only when asked for: a silent noise calibration would mislead
    assert main(["bundle", "--model", "lenet", "--out", str(tmp_path / "y")]) == 2
    assert "int8 needs calibration images" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    assert main(["bundle", "--out", str(tmp_path / "z")]) == 2  # --model defaults to lenet; --calib still needed
    assert "--calib random" in capsys.readouterr().err


def test_bundle_of_a_quantized_model_file_and_of_real_calibration_images(tmp_path, capsys):
    """--quantized deploys a .qbm as it is (here AdaRound, which the bundle itself would not make)."""
    syn = "synthetic:n=120,shape=1x8x8,classes=10,seed=0"
    assert main(["quantize", "--model", "lenet", "--data", syn, "--calib-size", "40", "--method", "w8a8:adaround",
                 "--adaround-iters", "20", "--out", str(tmp_path / "q"), "--store", str(tmp_path / "q.db"),
                 "--no-progress", "--json"]) == 0
    qbm = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["quant"]["artifact"]
    out = tmp_path / "b"
    assert main(["bundle", "--quantized", qbm, "--variants", "int8", "--formats", "onnx", "--out", str(out),
                 "--no-zip", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["models"]
    assert entry["scheme"] == "w8a8:adaround" and "from " + qbm in entry["quantized_with"]
    assert manifest["input_shape"] == [1, 8, 8]
    out2 = tmp_path / "c"
    assert main(["bundle", "--model", "lenet", "--calib", syn, "--calib-size", "32", "--variants", "int8",
                 "--formats", "onnx", "--out", str(out2), "--no-zip", "--no-progress"]) == 0
    m2 = json.loads((out2 / "manifest.json").read_text())
    assert m2["samples"]["source"] == f"8 images of {syn}, none of them calibration images"
    assert f"calibrated on 32 images of {syn}" in m2["models"][0]["quantized_with"]
