"""``quantbench bench`` end to end (tiny model, short timings), and its bad-input errors."""

from __future__ import annotations

import json

import pytest

from quantbench.cli import main
from quantbench.engines.base import ENGINES
from quantbench.store import ResultStore

FAST = ["--threads", "1", "--min-time-s", "0.001", "--no-progress"]


def _bench(tmp_path, *extra):
    return ["bench", "--store", str(tmp_path / "b.db"), "--out", str(tmp_path / "out"), *FAST, *extra]


def test_bench_json_store_and_report(tmp_path, capsys):
    assert main([*_bench(tmp_path, "--model", "lenet", "--engines", "torch,onnxruntime", "--batch-sizes", "1,2",
                         "--no-isolate"), "--json"]) == 0
    recs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["records"]
    assert isinstance(recs, list)
    pairs = [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "dynamic")]
    if ENGINES.get("torch").supports("bf16")[0]:  # native BF16 CPUs only
        pairs.append(("torch", "bf16"))
    assert {(r["engine"], r["variant"], r["batch"]) for r in recs} == {(e, v, b) for e, v in pairs for b in (1, 2)}
    for r in recs:
        assert {"engine", "variant", "batch", "median_ms", "p90_ms", "throughput_ips", "gmacs_per_s",
                "fraction_of_peak", "speedup_vs_fp32", "speedup_vs_torch_fp32", "macs_batch"} <= set(r)
        ordered = 0 < r["median_ms"] <= r["p90_ms"]  # order statistics of the same samples, not a speed
        assert ordered
        assert r["fraction_of_peak"] > 0  # the CLI measures this machine's peaks
    with ResultStore(tmp_path / "b.db") as store:
        (run,) = store.runs()
        rows = store.query(run_id=run["run_id"])
    metrics = {r["metric"] for r in rows}
    assert {"latency_median_ms", "speedup_vs_torch_fp32", "gmacs_per_s", "macs_batch", "peak_gmacs_per_s",
            "deployed_bytes"} <= metrics
    html = (tmp_path / "out" / "report.html").read_text()
    for needle in ("Findings", "speedup_matrix", "latency_vs_batch", "peaks (dense GEMM)"):
        assert needle in html, needle
    assert "macs_vs_batch" not in html  # a straight line carries no information
    # a verdict only when measured apart on a quiet machine; otherwise the report says why not
    assert any(s in html for s in ("SLOWER than", "FASTER than", "faster than", "no measurable difference",
                                   "busy")), html[:2000]


def test_bench_text_output_and_quantized_artifact(tmp_path, capsys):
    syn = "synthetic:n=120,shape=1x8x8,classes=10,seed=0"
    assert main(["quantize", "--model", "lenet", "--data", syn, "--calib-size", "40", "--sensitivity-images", "0",
                 "--store", str(tmp_path / "q.db"), "--out", str(tmp_path / "q"), "--no-progress", "--json"]) == 0
    capsys.readouterr()
    assert main(_bench(tmp_path, "--model", "lenet", "--engines", "onnxruntime", "--variants", "int8",
                       "--batch-sizes", "1", "--quantized", str(tmp_path / "q"))) == 0
    out = capsys.readouterr().out
    assert "int8 scales: " + str(tmp_path / "q") in out
    assert "machine peaks (dense GEMM): fp32" in out and "findings:" in out
    lines = [ln.split() for ln in out.splitlines() if ln.startswith(("torch ", "onnxruntime "))]
    assert [ln[:3] for ln in lines] == [["torch", "fp32", "1"], ["onnxruntime", "int8", "1"]]
    assert lines[1][-2] != "–"  # isolated by default: peak RSS per engine is measured


@pytest.mark.parametrize("extra, needle", [
    (["--model", "lenet", "--engines", "tensorrt"], "unknown engine 'tensorrt'"),
    (["--model", "lenet", "--batch-sizes", "0"], "batch_sizes must be >= 1, got 0"),
    (["--model", "lenet", "--batch-sizes", "1,x"], "batch_sizes[1] must be int"),
    (["--model", "vgg11_cifar", "--input-shape", "3x8x8", "--engines", "torch"], "cannot take a 3x8x8 input"),
    (["--model", "lenet", "--variants", "int3"], "unknown variant 'int3'"),
    (["--model", "nosuchnet"], "nosuchnet"),
    (["--model", "/tmp/nosuch.py:build"], "/tmp/nosuch.py: model file not found"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, needle):
    assert main(_bench(tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "b.db").exists()  # nothing was started, nothing stored


def test_engine_not_installed_exits_2(tmp_path, capsys, absent_engine):
    assert main(_bench(tmp_path, "--model", "lenet", "--engines", absent_engine)) == 2
    err = capsys.readouterr().err.strip()
    assert "engine 'absent-engine' is not installed" in err and "quantbench_no_such_package" in err


def test_bad_study_file_exits_2(tmp_path, capsys):
    f = tmp_path / "study.yaml"
    f.write_text("kind: bench\ncells: [{model: lenet}]\nengine: all\n")
    assert main(_bench(tmp_path, "--config", str(f))) == 2
    err = capsys.readouterr().err.strip()
    assert f"{f}: unknown key 'engine'" in err


def test_bench_takes_the_input_shape_a_users_qbm_recorded(tmp_path, capsys):
    """A user's nn.Module fixes no input size; the .qbm quantized at 1x8x8 says it, so no --input-shape."""
    (tmp_path / "net.py").write_text(
        "import torch\n"
        "def build(num_classes=10, in_channels=1):\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 3, padding=1), torch.nn.ReLU(),\n"
        "                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),\n"
        "                               torch.nn.Linear(8, num_classes))\n")
    model = f"{tmp_path / 'net.py'}:build"
    assert main(["quantize", "--model", model, "--data", "digits", "--calib-size", "64", "--no-store",
                 "--out", str(tmp_path / "q"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["bench", "--model", model, "--quantized", str(tmp_path / "q"), "--engines", "onnxruntime",
                 "--variants", "int8", "--batch-sizes", "2", *FAST, "--no-store", "--no-isolate",
                 "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["input_shape"] == [1, 8, 8]
    assert {(r["engine"], r["variant"]) for r in rec["records"]} == {("torch", "fp32"), ("onnxruntime", "int8")}
