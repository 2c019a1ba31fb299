"""CLI end to end, in-process through ``cli.main(argv)``, on tiny synthetic data."""

from __future__ import annotations

import json

import pytest

from quantbench.cli import main
from quantbench.store import ResultStore

SYN = "synthetic:n=240,shape=1x8x8,classes=10,seed=0"


def _last_json(capsys) -> object:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def _run_args(tmp_path, *extra: str) -> list[str]:
    return ["--data", SYN, "--model", "lenet", "--epochs", "2", "--batch-sizes", "1,4",
            "--store", str(tmp_path / "q.db"), "--no-progress", "--min-time-s", "0.01", "--min-iters", "3",
            "--set", "methods=[w8a8:mse, w4a8:adaround]", "--adaround-iters", "50", "--calib-size", "64",
            "--qat", "w4a4", "--qat-epochs", "1", *extra]


def test_run_writes_report_store_and_json(tmp_path, capsys):
    assert main(["run", *_run_args(tmp_path), "--json"]) == 0
    rec = _last_json(capsys)
    run_dir = tmp_path / rec["run_id"]
    assert rec["out_dir"] == str(run_dir)
    for name in ("report.html", "report.md", "results.json", "config.yaml", "model_fp32.pt"):
        assert (run_dir / name).is_file(), name
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "training_curves" in html and "latency_vs_batch" in html
    metrics = {r["metric"] for r in rec["results"]}
    methods = {r["method"] for r in rec["results"]}
    assert methods == {"fp32", "w8a8:mse", "w4a8:adaround", "w4a4:mse-start", "w4a4:qat"}
    assert {r["metric"] for r in rec["results"] if r["method"] == "w4a8:adaround"} >= {"top1", "top1_drop", "size_bytes"}
    # QAT rows: accuracy beside its PTQ start, training time per epoch beside this run's FP32 training
    assert {r["metric"] for r in rec["results"] if r["method"] == "w4a4:qat"} >= {
        "top1", "top1_drop", "size_bytes", "train_time_s", "epoch_time_s", "qat_vs_fp32_epoch_time"}
    assert "accuracy_vs_size" in html and "accuracy_vs_latency" in html
    train_rows = [r for r in rec["results"] if r["metric"] == "train_top1"]
    assert {r["method"] for r in train_rows} >= {"fp32", "w8a8:mse"}
    assert {"top1", "top5", "params", "size_bytes", "macs", "flops", "latency_median_ms", "throughput_ips",
            "train_time_s", "epoch.train_loss"} <= metrics
    with ResultStore(tmp_path / "q.db") as store:
        run = store.run(rec["run_id"])
        assert run["status"] == "finished" and run["config"]["epochs"] == 2 and run["config"]["kind"] == "run"
        assert "cpu_model" in run["environment"]
        lat = store.query(run_id=rec["run_id"], metric="latency_median_ms", engine="torch")
        assert sorted(r["batch"] for r in lat) == [1, 4]
        int8 = store.query(run_id=rec["run_id"], metric="latency_median_ms", engine="torch-int8")
        assert {r["method"] for r in int8} >= {"w8a8:mse"}  # quantized variants timed where they deploy
        assert {r["batch"] for r in int8} == {1, 4}
        lat += int8
        p90_not_below_median = [r["extra"]["p90_ms"] >= r["value"] for r in lat]  # structure, not speed
        assert all(p90_not_below_median)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["config"]["data"] == SYN and len(saved["results"]) == len(rec["results"])
    # config.yaml is itself an experiment file: it reruns the same experiment
    assert main(["run", "--config", str(run_dir / "config.yaml"), "--store", str(tmp_path / "again.db"),
                 "--no-progress", "--json"]) == 0
    again = _last_json(capsys)
    same = {(r["method"], r["metric"]): r["value"] for r in rec["results"] if r["metric"] == "top1"}
    assert {(r["method"], r["metric"]): r["value"] for r in again["results"] if r["metric"] == "top1"} == same


def test_run_prints_summary_table_and_report_path(tmp_path, capsys):
    assert main(["run", *_run_args(tmp_path, "--epochs", "1")]) == 0
    out = capsys.readouterr().out
    assert "top-1 % [95% CI]" in out and "report: " in out and out.strip().endswith("report.html")


def test_train_then_eval_checkpoint(tmp_path, capsys):
    assert main(["train", "--data", SYN, "--model", "lenet", "--epochs", "2", "--store", str(tmp_path / "q.db"),
                 "--no-progress", "--json"]) == 0
    ckpt = _last_json(capsys)["checkpoint"]
    assert main(["eval", "--model", "lenet", "--checkpoint", ckpt, "--data", SYN, "--json", "--no-progress",
                 "--store", str(tmp_path / "q.db")]) == 0
    rec = _last_json(capsys)
    assert rec["n_images"] == 240 and 0 <= rec["top1"] <= 100 and rec["top5"] >= rec["top1"]


def test_results_filter_and_export(tmp_path, capsys):
    assert main(["run", *_run_args(tmp_path, "--epochs", "1"), "--json"]) == 0
    capsys.readouterr()
    db = str(tmp_path / "q.db")
    assert main(["results", "--store", db, "--metric", "top1", "--method", "fp32", "--json"]) == 0
    rows = _last_json(capsys)
    assert len(rows) == 1 and rows[0]["unit"] == "%"
    out_csv = tmp_path / "x.csv"
    assert main(["results", "--store", db, "--format", "csv", "--out", str(out_csv)]) == 0
    assert out_csv.read_text().startswith("id,run_id,model")
    assert main(["results", "--store", db, "--runs"]) == 0
    assert "finished" in capsys.readouterr().out


def test_models_and_datasets_listings(capsys):
    assert main(["models", "resnet2*", "--json"]) == 0
    recs = _last_json(capsys)
    r20 = next(r for r in recs if r["name"] == "resnet20")
    assert r20["params"] == 269_722 and r20["macs"] > 40_000_000
    assert main(["models", "vgg16", "--num-classes", "10", "--no-progress"]) == 0  # the published VGG16 CIFAR-10 count
    assert "134,301,514" in capsys.readouterr().out
    assert main(["datasets", "--json"]) == 0
    kinds = {r["kind"] for r in _last_json(capsys)}
    assert {"digits", "synthetic", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder"} <= kinds


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["eval", "--model", "lenet", "--data", "imagefolder:/nonexistent/dir"], "/nonexistent/dir"),
        (["eval", "--model", "nosuchnet", "--data", SYN], "nosuchnet"),
        (["eval", "--model", "lenet", "--data", "nosuchkind:x"], "nosuchkind"),
        (["eval", "--model", "lenet", "--data", SYN, "--checkpoint", "/nonexistent.pt"], "/nonexistent.pt"),
        (["run", "--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
        (["run", "--set", "epoch=3"], "unknown key 'epoch'"),
        (["run", "--batch-sizes", "1,x"], "batch_sizes[1] must be int"),
        (["run", "--seed", "-1"], "seed must be >= 0"),
        (["quantize", "--calib-size", "0"], "calib_size must be >= 1"),
        (["qat", "--lr", "-1"], "lr must be > 0"),
        (["mixed", "--budget-kb", "nan"], "budget_kb must be a finite number"),
        (["split", "--eval-size", "0"], "eval_size must be >= 1"),
        (["eval", "--topk", "1000000"], "topk must be <= 1000"),
        (["bench", "--min-time-s", "-1"], "min_time_s must be > 0"),
        (["results", "--out", "/missing/dir/x.csv", "--store", "/nonexistent/q.db"], "/nonexistent/q.db"),
        (["results", "--store", "/nonexistent/q.db"], "/nonexistent/q.db"),
        (["nosuchverb"], "nosuchverb"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err


def test_corrupt_checkpoint_exit_2_and_store_untouched(tmp_path, capsys):
    db = tmp_path / "q.db"
    assert main(["run", *_run_args(tmp_path, "--epochs", "1"), "--json"]) == 0
    capsys.readouterr()
    before = db.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    assert main(["eval", "--model", "lenet", "--checkpoint", str(bad), "--data", SYN, "--store", str(db)]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert db.read_bytes() == before


def test_engines_listing(capsys):
    assert main(["engines", "--json"]) == 0
    rows = {r["name"]: r for r in _last_json(capsys)}
    assert {"torch", "onnxruntime", "openvino", "torch-int8"} <= set(rows)
    assert "fp32" in rows["torch"]["variants"] and "int8" in rows["onnxruntime"]["variants"]
    assert all(r["available"] or r["reason"] for r in rows.values())
