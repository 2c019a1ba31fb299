"""The GPU engines (torch-cuda, torch-cuda-compile, onnxruntime-cuda): unavailable with their reason on a
CPU machine; parity and timing on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from quantbench.engines import Deployable, engine_status, load_session
from quantbench.errors import QuantbenchError
from quantbench.experiments.bench import plan_jobs
from quantbench.measure.latency import measure_latency

CUDA = torch.cuda.is_available()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.mark.skipif(CUDA, reason="this machine has CUDA; the CPU-only behaviour is not observable")
def test_without_cuda_the_engine_is_listed_unavailable_and_refused_in_one_line():
    row = next(r for r in engine_status() if r["name"] == "torch-cuda")
    assert not row["available"] and "CUDA is not available" in row["reason"]
    with pytest.raises(QuantbenchError, match="engine 'torch-cuda' is not available: CUDA is not available"):
        load_session("torch-cuda", Deployable(_model(), None, (3, 8, 8)), "fp16")
    _, skipped = plan_jobs(("all",), ())
    assert any(s["engine"] == "torch-cuda" and "CUDA is not available" in s["reason"] for s in skipped)


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(CUDA, reason="this machine has CUDA; the CPU-only behaviour is not observable")
def test_without_cuda_the_compiled_gpu_engine_is_unavailable_with_the_reason():
    row = next(r for r in engine_status() if r["name"] == "torch-cuda-compile")
    assert not row["available"] and "CUDA is not available" in row["reason"]


@pytest.mark.skipif(_ort_has_cuda(), reason="this onnxruntime has the CUDA provider")
def test_onnxruntime_without_cuda_provider_is_unavailable_and_refused_in_one_line():
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    row = next(r for r in engine_status() if r["name"] == "onnxruntime-cuda")
    assert not row["available"] and "has no CUDAExecutionProvider" in row["reason"]
    assert "onnxruntime-gpu" in row["reason"]
    with pytest.raises(QuantbenchError, match="engine 'onnxruntime-cuda' is not available"):
        load_session("onnxruntime-cuda", Deployable(_model(), None, (3, 8, 8)), "fp32")


@pytest.mark.skipif(not CUDA, reason="CUDA is not available on this machine")
@pytest.mark.parametrize("engine", ["torch-cuda", "torch-cuda-compile"])
@pytest.mark.parametrize("variant", ["fp32", "tf32", "fp16", "bf16"])
def test_gpu_parity_and_cuda_event_timing(engine, variant, tmp_path):
    from quantbench.engines import ENGINES

    ok, reason = ENGINES.get(engine).supports(variant)
    if not ok:
        pytest.skip(reason)
    model = _model()
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = load_session(engine, Deployable(model, None, (3, 8, 8)), variant, workdir=tmp_path)
    out = sess.run(x)
    if variant == "fp32":
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    else:
        cos = float((out * ref).sum() / (np.linalg.norm(out) * np.linalg.norm(ref)))
        assert cos >= 0.99
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    lat = measure_latency(sess.runner(4), batch_size=4, min_time_s=0.05)
    one_event_per_call = len(sess.event_ms) >= lat.iterations and all(e > 0 for e in sess.event_ms)
    assert one_event_per_call
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    if engine == "torch-cuda-compile":  # compiled before timing, for the batch it runs
        assert 4 in sess.info["compile_s"] and 16 in sess.info["compile_s"]


@pytest.mark.skipif(not _ort_has_cuda(), reason="onnxruntime has no CUDAExecutionProvider here")
def test_onnxruntime_cuda_parity_and_iobinding_runner(tmp_path):
    model = _model()
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = load_session("onnxruntime-cuda", Deployable(model, None, (3, 8, 8)), "fp32", workdir=tmp_path)
    assert sess.info["provider"] == "CUDAExecutionProvider"
    np.testing.assert_allclose(sess.run(x), ref, rtol=1e-3, atol=1e-4)
    lat = measure_latency(sess.runner(4), batch_size=4, min_time_s=0.05)
    assert lat.iterations >= 1
