"""The CUDA engine: unavailable with its reason on a CPU machine; parity and event timing on a GPU."""

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


@pytest.mark.skipif(not CUDA, reason="CUDA is not available on this machine")
@pytest.mark.parametrize("variant", ["fp32", "tf32", "fp16", "bf16"])
def test_gpu_parity_and_cuda_event_timing(variant, tmp_path):
    from quantbench.engines import ENGINES

    ok, reason = ENGINES.get("torch-cuda").supports(variant)
    if not ok:
        pytest.skip(reason)
    model = _model()
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = load_session("torch-cuda", Deployable(model, None, (3, 8, 8)), variant, workdir=tmp_path)
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
