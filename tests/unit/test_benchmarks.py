"""The benchmark scripts: their pure helpers and their refusals (the measurements themselves run by hand)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:  # the scripts import their shared helpers as ``common``
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_pooled_difference_averages_per_image_then_over_images():
    ptq = _load("ptq_vs_onnxruntime")
    # 4 images, each scored by 2 folds: per-image means +1, +0.5, 0, -0.5 -> mean +0.25 = +25 points
    per_image = np.array([2.0, 1.0, 0.0, -1.0])
    d = ptq.pooled_difference(per_image, np.array([2, 2, 2, 2]))
    assert d["diff_points"] == pytest.approx(25.0)
    sd = np.std([1.0, 0.5, 0.0, -0.5], ddof=1)
    assert d["ci_high"] - d["diff_points"] == pytest.approx(100 * 1.959964 * sd / 2)
    assert d["n_images"] == 4


def test_ptq_vs_onnxruntime_refuses_missing_data_and_unknown_methods(tmp_path, capsys):
    ptq = _load("ptq_vs_onnxruntime")
    assert ptq.main(["--weights", str(tmp_path / "none.th"), "--data", str(tmp_path)]) == 1
    assert "not found: weights" in capsys.readouterr().err
    weights = tmp_path / "w.th"
    weights.write_bytes(b"x")
    assert ptq.main(["--weights", str(weights), "--data", str(tmp_path), "--methods", "ort-kl"]) == 2
    assert "unknown method(s) ['ort-kl']" in capsys.readouterr().err
    assert ptq.main(["--weights", str(weights), "--data", str(tmp_path), "--folds", "1"]) == 2
    assert "--folds must be >= 2" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ptq_resnet20", "ptq_vs_onnxruntime", "split_noise", "quantize_speed"])
def test_real_data_benchmarks_exit_1_naming_what_is_missing(name, tmp_path, capsys):
    bench = _load(name)
    assert bench.main(["--weights", str(tmp_path / "none.th"), "--data", str(tmp_path / "nodata")]) == 1
    err = capsys.readouterr().err
    assert f"{name}: not found: weights" in err and "nodata" in err


def test_reconstruct_variants_parses_and_refuses_before_any_work(tmp_path, capsys):
    rv = _load("reconstruct_variants")
    assert rv.parse_variant("w4a4:qdrop-flint8@act_lr=0,seed=1+recal") == ("w4a4:qdrop-flint8",
                                                                            {"act_lr": 0.0, "seed": 1}, True)
    assert rv.parse_variant("w4a4:adaround") == ("w4a4:adaround", {}, False)
    assert rv.main([str(tmp_path), "w4a4:qdrop"]) == 2
    assert "needs config.yaml and model_fp32.pt" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("kind: run\n")
    (tmp_path / "model_fp32.pt").write_bytes(b"")
    for bad, needle in [("w4a4:mse@seed=1", "without block reconstruction"), ("w4a4:qdrop@speed=2", "key=value"),
                        ("w4a4:bogus", "unknown algorithm")]:
        assert rv.main([str(tmp_path), bad]) == 2
        assert needle in capsys.readouterr().err


def test_reconstruct_variants_reruns_a_stored_run_on_its_own_images(tmp_path, capsys):
    import json

    from quantbench.cli import main

    out = tmp_path / "run"
    assert main(["run", "--model", "lenet", "--data", "digits", "--epochs", "1", "--methods", "w8a8", "--qat", "",
                 "--batch-sizes", "1", "--out", str(out), "--store", str(tmp_path / "s.db"), "--no-progress"]) == 0
    capsys.readouterr()
    rv = _load("reconstruct_variants")
    assert rv.main([str(out), "w4a4:brecq@iters=2", "w4a4:qdrop@iters=2,drop_prob=0", "--threads", "1",
                    "--out", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    fp32 = json.loads((out / "results.json").read_text())
    assert rows[0]["top1"] == rows[1]["top1"] and rows[0]["loss"] == rows[1]["loss"]  # QDrop with p 0 is BRECQ
    assert rows[1]["paired_vs_first"]["diff_points"] == 0
    assert "fp32: top-1" in capsys.readouterr().out and fp32  # the run's own FP32 model was evaluated


@pytest.mark.parametrize("name, units", [
    ("holdout_cnn", ["stem.0", "group.0..dense.0", "se", "down.0", "head.1", "head.3"]),
    ("holdout_bottleneck", ["stem.0"] + [f"stages.{i}" for i in range(6)] + ["head.3"]),
    ("holdout_mobile",
     ["features.0"] + [f"features.{i}.body" for i in range(3, 10)] + ["features.10", "classifier.1"]),
])
def test_holdout_models_load_as_user_code_and_cut_into_units(name, units):
    """The hold-out CNNs the low-bit claims are checked on: loaded the way `--model FILE.py:build` loads a
    user's file, prepared, and cut into the reconstruction units docs/benchmarks/ptq.md names."""
    import torch

    from quantbench.models.sources import resolve_model
    from quantbench.quant.brecq_blocks import find_blocks
    from quantbench.quant.prepare import calibrate, prepare
    from quantbench.quant.spec import parse_scheme

    loaded = resolve_model(f"{BENCH / name}.py:build", num_classes=10, in_channels=3)
    assert loaded.kind == "python"
    model = loaded.module.eval()
    x = torch.randn(8, 3, 32, 32)
    assert model(x).shape == (8, 10)
    qm = calibrate(prepare(model, parse_scheme("w4a4", first_last="int8")), x)
    assert [b.name for b in find_blocks(qm, model=model)] == units


def test_ptq_lowbit_rows_take_reconstruction_keywords_and_refuse_bad_ones(tmp_path, capsys):
    lowbit = _load("ptq_lowbit")
    assert lowbit.split_rows("w4a4:mse-flint8, w4a4:qdrop-flint8@fisher=true,seed=1,w2a4:qdrop") == [
        "w4a4:mse-flint8", "w4a4:qdrop-flint8@fisher=true,seed=1", "w2a4:qdrop"]
    weights = tmp_path / "w.th"
    weights.write_bytes(b"x")
    base = ["--weights", str(weights), "--data", str(tmp_path), "--models", "resnet20"]
    for bad, needle in [("w4a4:mse@seed=1", "without block reconstruction"), ("w4a4:qdrop@speed=2", "key=value"),
                        ("w4a4:qdrop+recal", "+recal is reconstruct_variants.py's"), ("w4a4:bogus", "unknown")]:
        assert lowbit.main([*base, "--rows", bad]) == 2, bad
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
