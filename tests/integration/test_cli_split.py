"""``quantbench split`` end to end on a small ResNet and synthetic images, and its bad-input errors."""

from __future__ import annotations

import json

import pytest

from quantbench.cli import main
from quantbench.store import ResultStore

SYN = "synthetic:n=160,shape=3x32x32,classes=10,seed=0"


def _args(tmp_path, *extra):
    return ["split", "--model", "resnet20", "--data", SYN, "--train-fraction", "0.5", "--calib-size", "40",
            "--store", str(tmp_path / "s.db"), "--out", str(tmp_path / "out"), "--no-progress", *extra]


def test_split_records_sizes_and_report(tmp_path, capsys):
    assert main([*_args(tmp_path, "--splits", "1,5", "--qbins", "4,8", "--companding", "none,mulaw",
                        "--noise-train", "1", "--noise-qbins", "4"), "--json"]) == 0
    recs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["records"]
    keys = {"split", "qbins", "companding", "noise", "top1", "bpp", "cr", "edge_macs", "cloud_macs"}
    assert all(keys <= set(r) for r in recs)
    plain = [r for r in recs if r["noise"] == "none"]
    assert sorted((r["split"], r["qbins"], r["companding"]) for r in plain) == sorted(
        (s, q, c) for s in (1, 5) for q in (4, 8) for c in ("none", "mulaw"))
    assert {r["noise"] for r in recs} == {"none", "noise", "no-noise"}
    assert {(r["split"], r["qbins"]) for r in recs if r["noise"] == "noise"} == {(1, 4), (5, 4)}
    for r in recs:
        n = r["n_images"]
        assert r["total_bits"] == 8 * (r["coded_bytes"] + r["side_bytes"]) and r["side_bytes"] == 8 * n
        assert r["bpp"] == pytest.approx(r["total_bits"] / (n * 32 * 32))
        assert r["cr"] == pytest.approx(24 * n * 32 * 32 / r["total_bits"])
        assert r["edge_macs"] + r["cloud_macs"] == 40_551_040
    q4 = {(r["split"], r["companding"]): r["bpp"] for r in plain if r["qbins"] == 4}
    q8 = {(r["split"], r["companding"]): r["bpp"] for r in plain if r["qbins"] == 8}
    assert all(q4[k] < q8[k] for k in q4)  # fewer levels, fewer bits
    with ResultStore(tmp_path / "s.db") as store:
        (run,) = store.runs()
        metrics = {r["metric"] for r in store.query(run_id=run["run_id"])}
    stored = {"split.top1", "split.bpp", "split.latency_s", "split.best", "split.recover_psnr_db"}
    assert stored.issubset(metrics)
    html = (tmp_path / "out" / "report.html").read_text()
    for needle in ("Split computing", "split_accuracy", "split_bpp", "split_latency", "anonymization_split1",
                   "linear decoder"):
        assert needle in html, needle


@pytest.mark.parametrize("extra, needle", [
    (["--splits", "12"], "has split points 0..9 (see --list-splits), got 12"),
    (["--qbins", "1"], "qbins must be >= 2"),
    (["--companding", "alaw"], "companding must be one of none, mulaw"),
    (["--bandwidths", "0"], "bandwidths must be > 0"),
    (["--edge", "toaster"], "device profile 'toaster'"),
    (["--codec", "magic"], "magic"),
    (["--finetune-part", "edge"], "--finetune-part: invalid choice: 'edge'"),
    (["--bn-stats", "maybe"], "--bn-stats: invalid choice: 'maybe'"),
])
def test_bad_input_exits_2(tmp_path, capsys, extra, needle):
    assert main(_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_options_file_gives_the_flags_and_typed_flags_override_it(tmp_path, capsys):
    cfg = tmp_path / "split.yaml"
    cfg.write_text(f"model: resnet20\ndata: '{SYN}'\ntrain_fraction: 0.5\ncalib_size: 40\nsplits: [1, 3]\n"
                   "qbins: [4]\ncompanding: [none]\n")
    assert main(["split", "--config", str(cfg), "--splits", "5", "--store", str(tmp_path / "s.db"),
                 "--out", str(tmp_path / "out"), "--json", "--no-progress"]) == 0
    recs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["records"]
    assert [(r["split"], r["qbins"], r["companding"]) for r in recs] == [(5, 4, "none")]


@pytest.mark.parametrize("text, needle", [
    ("model: resnet20\nsplitz: [1]\n", "unknown key 'splitz'"),
    ("model: resnet20\nkind: ptq\n", "is a 'ptq' experiment file; this verb runs 'split'"),
    ("- just a list\n", "must be a mapping"),
    ("model: resnet20\nqbins: {a: 1}\n", "qbins must be a list"),
    ("model: resnet20\ncalib_size: -3\n", "calib_size must be >= 1"),
])
def test_bad_options_file_exits_2_naming_file_and_key(tmp_path, capsys, text, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert main(["split", "--config", str(cfg), "--data", SYN]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(cfg) in err and needle in err, err


def test_list_splits_of_a_users_model(tmp_path, capsys):
    net = tmp_path / "net.py"
    net.write_text("import torch.nn as nn\n"
                   "def build(num_classes=10, in_channels=3):\n"
                   "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),\n"
                   "                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
                   "                         nn.Flatten(), nn.Linear(8, num_classes))\n")
    assert main(["split", "--model", f"{net}:build", "--data", SYN, "--list-splits", "--no-store", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    points = rec["points"]
    assert [p["label"] for p in points][:3] == ["0", "1", "2"]  # Sequential children by index
    total = points[0]["edge_macs"] + points[0]["cloud_macs"]
    assert all(p["edge_macs"] + p["cloud_macs"] == total for p in points)
    assert points[2]["feature_shape"] == [8, 16, 16]
    assert main(["split", "--model", f"{net}:build", "--data", SYN, "--splits", "2", "--qbins", "4",
                 "--companding", "none", "--calib-size", "40", "--no-store", "--json", "--no-progress"]) == 0
    (rec,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["records"]
    assert rec["split"] == 2 and rec["feature_shape"] == [8, 16, 16] and 0 < rec["bpp"]


def test_training_regimes_noise_at_two_blocks_in_one_run(tmp_path, capsys):
    """``--noise-at 1,2``: one model per noise block (and its no-noise twin), each evaluated at every split."""
    assert main(_args(tmp_path, "--splits", "1,2", "--qbins", "4", "--companding", "none", "--noise-train", "1",
                      "--noise-at", "1,2")) == 0
    text = capsys.readouterr().out
    with ResultStore(tmp_path / "s.db") as store:
        (run,) = store.runs()
        rows = [r for r in store.query(run_id=run["run_id"]) if r["metric"] == "split.top1"]
    regimes = {"none", "noise@1", "noise@2", "no-noise@1", "no-noise@2"}
    assert {(r["extra"]["split"], r["extra"]["noise"]) for r in rows} == {(s, n) for s in (1, 2) for n in regimes}
    assert "Edge / cloud compute per image (MACs; FLOPs = 2 x MACs" in text and "edge FLOPs (2 x MACs)" in text
    html = (tmp_path / "out" / "report.html").read_text()
    for needle in ("split_regimes", "split_accuracy_resnet20_noise_2", "Edge / cloud compute per image"):
        assert needle in html, needle
