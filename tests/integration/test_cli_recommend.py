"""``quantbench recommend`` and ``quantize --max-drop`` as a user runs them: answers first, promises kept, refusals in one line."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from quantbench.experiments.layer import config_for, run_experiment

QB = [sys.executable, "-m", "quantbench"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*QB, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_recommend_prints_its_answer_first_and_stores_it_for_the_report(tmp_path: Path) -> None:
    proc = _run("recommend", "--model", "lenet", "--data", "digits", "--pretrain-epochs", "3", "--methods",
                "w8a8:mse,w4a4:minmax", "--control-method", "none", "--engines", "onnxruntime",
                "--max-drop", "3", "--train-fraction", "0.5", "--val-fraction", "0.6", "--batch-sizes", "8,1", "--rounds", "2",
                "--min-time-s", "0.05", "--no-progress", "--store", "q.db", "--out", "rec", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    first = next(line for line in lines if line.strip())
    assert first.startswith("On ") and "evaluation images never used for choosing" in first
    assert "avoid:" in proc.stdout and "all deployments" in proc.stdout
    with sqlite3.connect(tmp_path / "q.db") as db:
        rows = db.execute("SELECT method, engine, metric, batch, extra FROM results").fetchall()
    answer = json.loads(next(r[4] for r in rows if r[2] == "answer"))
    assert answer["lines"][0] == first  # stored as said
    assert answer["choice"]["batch"] == 8  # the answer is given at the first batch size listed
    assert {r[0] for r in rows if r[2] == "val_top1_drop_upper"} == {"w8a8:mse", "w4a4:minmax"}
    timed = {(r[0], r[1]) for r in rows if r[2] == "latency_median_ms"}
    assert len([r for r in rows if r[2] == "latency_median_ms"]) == len({(r[0], r[1], r[3]) for r in rows
                                                                        if r[2] == "latency_median_ms"})
    # two rounds merged into one row per cell (above); merge_rounds' doctest checks on fixed numbers that the
    # stored interval spans every round
    assert {("fp32", "torch"), ("fp32", "onnxruntime"), ("w8a8:mse", "onnxruntime"), ("w4a4:minmax", "onnxruntime")} == timed
    # the report opens with the answer
    md = (tmp_path / "rec" / "report.md").read_text()
    assert first[:60] in md.split("\n## ")[0]
    # the packed candidates are real files with the sizes stored
    sizes = {r[0]: json.loads(r[4])["file"] for r in rows if r[2] == "size_bytes"}
    assert (tmp_path / "rec" / sizes["w8a8:mse"]).is_file()


def test_recommend_refusals_are_one_line_with_exit_2(tmp_path: Path) -> None:
    no_int8 = _run("recommend", "--engines", "torch", "--no-store", cwd=tmp_path)
    assert no_int8.returncode == 2 and "deploys int8" in no_int8.stderr
    assert len(no_int8.stderr.strip().splitlines()) == 1
    too_few = _run("recommend", "--model", "lenet", "--data", "digits", "--max-drop", "0.1", "--engines",
                   "onnxruntime", "--no-store", "--no-progress", cwd=tmp_path)
    assert too_few.returncode == 2 and "cannot be proven on" in too_few.stderr and "validation images" in too_few.stderr
    assert len(too_few.stderr.strip().splitlines()) == 1
    fp32_method = _run("recommend", "--methods", "fp32", "--no-store", cwd=tmp_path)
    assert fp32_method.returncode == 2 and "quantizes nothing" in fp32_method.stderr


@pytest.fixture(scope="module")
def controlled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """W3A3 on a briefly trained LeNet: full quantization drops far more than the 2-point target."""
    out = tmp_path_factory.mktemp("ac")
    cfg = config_for("ptq", {"model": "lenet", "data": "digits", "pretrain_epochs": 4, "method": "w3a3:minmax",
                             "max_drop": 2.0, "train_fraction": 0.4, "val_fraction": 0.6, "calib_size": 256,
                             "store": str(out / "q.db"), "out": str(out / "run")})
    return run_experiment(cfg, progress=False, log=lambda m: None).record


def test_accuracy_control_keeps_its_promise_on_images_it_never_saw(controlled: dict) -> None:
    ac = controlled["accuracy_control"]
    first = ac["steps"][0]
    assert first["float_layers"] == [] and first["upper_bound"] > 2.0  # full W3A3 misses the target
    assert ac["met"] and ac["float_layers"], ac  # some layers went back to float, and that was enough
    assert ac["val_upper_bound"] <= 2.0
    # the evaluation images were never used for choosing; the promise holds there too
    assert controlled["drop"]["top1_points"] <= 2.0
    # layers returned to float in the order of their measured cost, and each step is recorded
    costs = [c["layer"] for c in ac["layer_costs"]]
    assert ac["float_layers"] == costs[: len(ac["float_layers"])]
    assert [len(s["float_layers"]) for s in ac["steps"]] == list(range(len(ac["steps"])))
    assert 0.0 < ac["float_macs_share"] < 1.0
    assert controlled["method"] == "w3a3:minmax+ac"


def test_the_saved_controlled_model_keeps_the_float_layers(controlled: dict) -> None:
    from quantbench.quant.save import read_quantized_meta

    meta = read_quantized_meta(controlled["quant"]["artifact"])
    overrides = meta["plan"]["overrides"]
    for name in controlled["accuracy_control"]["float_layers"]:
        assert overrides[name] == {"weight": None, "act": None}


def test_an_unreachable_target_says_so_and_keeps_the_best_model_tried(tmp_path: Path) -> None:
    proc = _run("quantize", "--model", "lenet", "--data", "digits", "--pretrain-epochs", "2", "--method",
                "w2a2:minmax", "--max-drop", "1.2", "--max-float-layers", "1", "--train-fraction", "0.3",
                "--val-fraction", "0.7", "--calib-size", "128", "--no-store", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning: max_drop 1.2 not reached" in proc.stderr
    assert "NOT reached (the best model tried is kept)" in proc.stdout


def test_recommend_on_an_in_memory_module_times_it_in_this_process() -> None:
    """The Python API's own nn.Module cannot be rebuilt in a fresh process; it is deployed as it is."""
    import torch

    import quantbench as qb

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 8 * 8, 10))
    rec = qb.recommend(net, "digits", max_drop=5.0, methods="w8a8:mse", control_method="none",
                       engines="onnxruntime", batch_sizes=[4], pretrain_epochs=1, min_time_s=0.01, no_store=True,
                       rounds=1)
    assert {(d["label"], d["engine"]) for d in rec["deployments"]} >= {("fp32", "onnxruntime"),
                                                                      ("w8a8:mse", "onnxruntime")}
    assert rec["answer"][0].startswith("On ")
