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
