"""Engine registry, Deployable, load_session's user errors, engine_status and evaluate_session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantbench.engines import (
    ENGINES,
    VARIANTS,
    Deployable,
    base,
    engine_status,
    evaluate_session,
    load_session,
)
from quantbench.engines.torch_engine import TorchEngine
from quantbench.errors import QuantbenchError
from quantbench.measure.accuracy import evaluate

SHAPE = (1, 8, 8)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)).eval()


@pytest.fixture
def dep() -> Deployable:
    return Deployable(_model(), None, SHAPE, name="tiny net/1")


def test_registry_holds_every_engine_with_known_variants():
    assert {"torch", "torch-int8", "onnxruntime", "openvino"} <= set(ENGINES.names())
    for name in ENGINES.names():
        cls = ENGINES.get(name)
        assert cls.name == name
        assert cls.variants and set(cls.variants) <= set(VARIANTS)


def test_engine_status_rows():
    rows = engine_status()
    assert [r["name"] for r in rows] == ENGINES.names()
    for row in rows:
        assert set(row) == {"name", "available", "reason", "variants", "unsupported"}
        assert isinstance(row["available"], bool)
        assert row["available"] or row["reason"]  # unavailable always says why
        assert set(row["unsupported"]) <= set(row["variants"])
    torch_row = next(r for r in rows if r["name"] == "torch")
    assert torch_row["available"] and "fp32" not in torch_row["unsupported"]


def test_deployable_validates_and_sanitises_the_name(dep):
    assert dep.name == "tiny_net_1" and dep.input_shape == SHAPE
    with pytest.raises(QuantbenchError, match="input_shape"):
        Deployable(_model(), None, (8, 8))
    with pytest.raises(QuantbenchError, match="input_shape"):
        Deployable(_model(), None, (1, 0, 8))
    with pytest.raises(QuantbenchError, match="nn.Module"):
        Deployable("not a model", None, SHAPE)


def test_load_session_user_errors(dep):
    with pytest.raises(QuantbenchError, match="unknown engine 'tensorrt'.*onnxruntime.*torch"):
        load_session("tensorrt", dep, "fp32")
    with pytest.raises(QuantbenchError, match="no variant 'dynamic'.*fp32, bf16"):
        load_session("torch", dep, "dynamic")
    with pytest.raises(QuantbenchError, match="quantize the model first"):
        load_session("torch-int8", dep, "int8")
    with pytest.raises(QuantbenchError, match="threads"):
        load_session("torch", dep, "fp32", threads=0)
    with pytest.raises(QuantbenchError, match="Deployable"):
        load_session("torch", _model(), "fp32")


def test_missing_package_makes_the_engine_unavailable(dep, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a)
    )
    cls = ENGINES.get("onnxruntime")
    ok, reason = cls.available()
    assert not ok and "pip install 'quantbench[onnx]'" in reason
    with pytest.raises(QuantbenchError, match="'onnxruntime' is not available.*not installed"):
        load_session("onnxruntime", dep, "fp32")
    row = next(r for r in engine_status() if r["name"] == "onnxruntime")
    assert row["available"] is False and "onnxruntime" in row["reason"]


def test_bf16_needs_native_cpu_support(dep, monkeypatch):
    monkeypatch.setattr(base, "real_cpu_flags", lambda *a: {"sse2", "avx2", "fma"})
    ok, reason = TorchEngine.supports("bf16")
    assert not ok and "avx512_bf16" in reason
    with pytest.raises(QuantbenchError, match="cannot run variant 'bf16' here"):
        load_session("torch", dep, "bf16")
    monkeypatch.setattr(base, "real_cpu_flags", lambda *a: set())
    assert "cannot read CPU flags" in TorchEngine.supports("bf16")[1]
    assert TorchEngine.supports("fp32") == (True, "")


def test_torch_session_runs_numpy_and_tensors_in_a_temporary_workdir(dep):
    sess = load_session("torch", dep, "fp32", threads=1)
    path = Path(sess.info["model_path"])
    assert path.is_file() and sess.info["model_bytes"] == path.stat().st_size
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        expected = dep.float_model(x).numpy()
    np.testing.assert_allclose(sess.run(x.numpy()), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sess.run(x), expected, rtol=1e-6, atol=1e-6)
    assert sess.run(x.numpy().astype(np.float64)).dtype == np.float32
    with pytest.raises(QuantbenchError, match="numpy array"):
        sess.run([[1.0]])
    with pytest.raises(QuantbenchError, match="batch_size"):
        sess.runner(True)
    del sess  # the temporary folder goes with the session
    assert not path.exists()


def test_workdir_is_kept(dep, tmp_path):
    sess = load_session("torch", dep, "fp32", workdir=tmp_path / "deploy")
    assert Path(sess.info["model_path"]).parent == tmp_path / "deploy"


def test_evaluate_session_equals_evaluate_on_the_model(dep):
    x, y = torch.randn(50, *SHAPE), torch.randint(0, 3, (50,))
    sess = load_session("torch", dep, "fp32")
    got = evaluate_session(sess, (x, y), batch_size=16, topk=(1, 2))
    want = evaluate(dep.float_model, (x, y), batch_size=16, topk=(1, 2))
    assert got.n_images == 50 and got.top1 == want.top1 and got.topk == want.topk
    np.testing.assert_array_equal(got.correct, want.correct)
