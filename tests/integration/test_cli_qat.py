"""``quantbench qat`` and ``quantbench mixed`` end to end on synthetic data, and their bad-input errors."""

from __future__ import annotations

import json

import pytest

from quantbench.cli import main
from quantbench.quant.save import load_quantized
from quantbench.store import ResultStore

SYN = "synthetic:n=300,shape=1x8x8,classes=4,seed=0"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    assert main(["train", "--data", SYN, "--model", "lenet", "--epochs", "4", "--store", str(d / "t.db"),
                 "--out", str(d / "run"), "--no-progress", "--json"]) == 0
    return d / "run" / "model_fp32.pt"


def _args(tmp_path, checkpoint, verb, *extra):
    return [verb, "--model", "lenet", "--checkpoint", str(checkpoint), "--data", SYN, "--calib-size", "64",
            "--store", str(tmp_path / "q.db"), "--out", str(tmp_path / "out"), "--no-progress", *extra]


def test_qat_json_rows_history_and_artifact(tmp_path, checkpoint, capsys):
    assert main([*_args(tmp_path, checkpoint, "qat", "--method", "w2a4", "--epochs", "2", "--lr", "1e-3"),
                 "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["n_images"] == 60 and rec["method"] == "w2a4:qat"  # 80% fine-tuning / 20% evaluation
    assert 0 <= rec["fp32"]["top1"] <= 100 and 0 <= rec["quant"]["top1"] <= 100
    assert rec["quant"]["size_bytes"] < rec["fp32"]["size_bytes"] / 4
    assert rec["ptq"]["method"] == "w2a4:mse" and len(rec["epochs"]) == 2
    assert rec["train_time_s"] > 0 and rec["fp32_epoch_s"] > 0 and rec["qat_vs_fp32_epoch_time"] > 0
    assert "240 images" in rec["split"]["train"] and "64 of the training images" in rec["split"]["calib"]
    assert load_quantized(rec["quant"]["artifact"]).plan.scheme == "w2a4"
    with ResultStore(tmp_path / "q.db") as store:
        rows = store.query(run_id=rec["run_id"])
    by_method = {}
    for r in rows:
        by_method.setdefault(r["method"], set()).add(r["metric"])
    assert {"top1", "top1_drop", "size_bytes"} <= by_method["w2a4:mse"]
    assert {"top1", "top1_drop", "size_bytes", "train_time_s", "epoch.train_loss", "epoch_time_s",
            "qat_vs_fp32_epoch_time", "top1_drop_vs_fp32_finetuned"} <= by_method["w2a4:qat"]
    # the float model fine-tuned the same way: the fair reference and the training-time baseline
    assert {"top1", "top1_drop", "train_time_s", "epoch.train_loss"} <= by_method["fp32-finetuned"]
    assert 0 <= rec["fp32_finetuned"]["top1"] <= 100 and rec["fp32_finetuned"]["train_time_s"] > 0
    assert "accuracy_vs_size" in (tmp_path / "out" / "report.html").read_text()


def test_qat_without_fp32_finetune_times_one_fp32_epoch(tmp_path, checkpoint, capsys):
    assert main([*_args(tmp_path, checkpoint, "qat", "--epochs", "1", "--no-fp32-finetune"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["fp32_finetuned"] is None and rec["fp32_epoch_s"] > 0
    with ResultStore(tmp_path / "q.db") as store:
        rows = store.query(run_id=rec["run_id"])
    assert any(r["method"] == "fp32" and r["metric"] == "epoch_time_s" for r in rows)
    assert not any(r["method"] == "fp32-finetuned" for r in rows)


def test_qat_with_a_mixed_plan(tmp_path, checkpoint, capsys):
    assert main([*_args(tmp_path, checkpoint, "qat", "--method", "w4a8", "--epochs", "1", "--budget-kb", "14"),
                 "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["method"] == "mixed:qat" and rec["mixed"]["predicted_file_bytes"] <= 14_000
    assert rec["quant"]["size_bytes"] <= 14_000  # the real file, metadata included, fits the budget
    assert set(rec["mixed"]["bits"]) == {"block1.0", "block2.0", "block3.0", "fc"}


def test_mixed_beats_or_matches_its_budget_and_reports_per_layer_bits(tmp_path, checkpoint, capsys):
    assert main([*_args(tmp_path, checkpoint, "mixed", "--avg-bits", "4", "--bits", "2,4,8"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["mixed"]["average_bits"] <= 4.0
    assert [t["layer"] for t in rec["mixed"]["table"]] == ["block1.0", "block2.0", "block3.0", "fc"]
    assert all(t["bits"] in (2, 4, 8) for t in rec["mixed"]["table"])
    assert rec["uniform"]["method"] == "w4a8:mse"
    assert {"fp32", "quant", "n_images"} <= set(rec) and rec["quant"]["size_bytes"] > 0
    assert 0 <= rec["mixed"]["predicted_top1"] <= 100


def test_mixed_file_fits_the_budget(tmp_path, checkpoint, capsys):
    assert main([*_args(tmp_path, checkpoint, "mixed", "--budget-kb", "15"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["quant"]["size_bytes"] <= 15_000
    import os

    assert os.path.getsize(rec["quant"]["artifact"]) == rec["quant"]["size_bytes"]


def test_mixed_text_output(tmp_path, checkpoint, capsys):
    assert main(_args(tmp_path, checkpoint, "mixed", "--budget-kb", "15")) == 0
    out = capsys.readouterr().out
    assert "average weight bits" in out and "mixed-a8:mse" in out and "w4a8:mse" in out


@pytest.mark.parametrize("verb, extra, needle", [
    ("qat", ["--epochs", "0"], "epochs must be >= 1"),
    ("qat", ["--bn-freeze-epoch", "-1"], "bn_freeze_epoch must be >= 0"),
    ("qat", ["--budget-kb", "-3"], "budget_kb must be > 0"),
    ("qat", ["--budget-kb", "abc"], "invalid float value: 'abc'"),
    ("qat", ["--method", "dynamic"], "QAT needs a static wXaY scheme"),
    ("qat", ["--method", "w9z"], "w9z"),
    ("qat", ["--method", "w4a4:magic"], "magic"),
    ("qat", ["--train-fraction", "1.5"], "train_fraction must be <= 0.95"),
    ("qat", ["--calib-size", "1000"], "fewer than calib_size 1000"),
    ("mixed", [], "exactly one budget"),
    ("mixed", ["--budget-kb", "10", "--avg-bits", "4"], "exactly one budget"),
    ("mixed", ["--avg-bits", "1"], "avg_bits must be >= 2"),
    ("mixed", ["--avg-bits", "4", "--bits", "1,4"], "bits must be >= 2"),
    ("mixed", ["--budget-kb", "0.1"], "not reachable"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, checkpoint, capsys, verb, extra, needle):
    assert main(_args(tmp_path, checkpoint, verb, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
