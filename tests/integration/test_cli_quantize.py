"""``quantbench quantize`` end to end on synthetic data, plus its bad-input errors."""

from __future__ import annotations

import json

import pytest

from quantbench.cli import main
from quantbench.quant.save import load_quantized
from quantbench.store import ResultStore

SYN = "synthetic:n=400,shape=1x8x8,classes=10,seed=0"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    assert main(["train", "--data", SYN, "--model", "lenet", "--epochs", "3", "--store", str(d / "q.db"),
                 "--out", str(d / "run"), "--no-progress", "--json"]) == 0
    return d / "run" / "model_fp32.pt"


def _quantize(tmp_path, checkpoint, *extra):
    return ["quantize", "--model", "lenet", "--checkpoint", str(checkpoint), "--data", SYN, "--calib-size", "100",
            "--store", str(tmp_path / "q.db"), "--out", str(tmp_path / "out"), "--no-progress",
            "--sensitivity-images", "50", *extra]


def test_quantize_json_record_store_and_artifact(tmp_path, checkpoint, capsys):
    assert main([*_quantize(tmp_path, checkpoint, "--method", "w4a8:minmax"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["n_images"] == 300 and rec["calib_images"] == 100
    assert rec["fp32"]["size_bytes"] > 3 * rec["quant"]["size_bytes"]
    assert 0 <= rec["quant"]["top1"] <= 100 and 0 <= rec["fp32"]["top1"] <= 100
    assert rec["drop"]["ci_low"] <= rec["drop"]["top1_points"] <= rec["drop"]["ci_high"]
    assert [r["layer"] for r in rec["layers"]] == ["block1.0", "block2.0", "block3.0", "fc"]
    qm = load_quantized(rec["quant"]["artifact"])
    assert qm.plan.scheme == "w4a8"
    with ResultStore(tmp_path / "q.db") as store:
        rows = store.query(run_id=rec["run_id"])
    methods = {r["method"] for r in rows}
    assert methods == {"fp32", "w4a8:minmax"}
    assert {r["metric"] for r in rows if r["method"] == "w4a8:minmax"} >= {
        "top1", "top5", "top1_drop", "size_bytes", "layer_sqnr_db", "layer_only_top1"}
    assert (tmp_path / "out" / "report.html").is_file()


def test_quantize_with_separate_calibration_set_evaluates_all_of_data(tmp_path, checkpoint, capsys):
    calib = "synthetic:n=120,shape=1x8x8,classes=10,seed=5"
    assert main([*_quantize(tmp_path, checkpoint, "--calib", calib, "--method", "dynamic"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["n_images"] == 400 and rec["method"] == "dynamic"


@pytest.mark.parametrize("extra, needle", [
    (["--method", "w9q2"], "quant scheme 'w9q2' unknown"),
    (["--method", "w8a8:magic"], "unknown algorithm in 'magic'"),
    (["--calib-size", "400"], "cannot give 400 calibration images"),
    (["--calib", "synthetic:n=50,shape=1x8x8,classes=10", "--calib-size", "100"], "fewer than calib_size 100"),
    (["--calib-size", "0"], "calib_size must be >= 1"),
])
def test_quantize_bad_input(tmp_path, checkpoint, capsys, extra, needle):
    assert main(_quantize(tmp_path, checkpoint, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
