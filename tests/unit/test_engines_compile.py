"""torch-compile: compiles per batch size before anything is timed, records compile time, needs a C++ compiler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from quantbench.engines import ENGINES, Deployable, engine_status, load_session
from quantbench.errors import QuantbenchError
from quantbench.measure.latency import measure_latency


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()


def test_runner_compiles_before_timing_and_records_compile_time(tmp_path):
    ok, reason = ENGINES.get("torch-compile").available()
    if not ok:
        pytest.skip(reason)
    model = _model()
    sess = load_session("torch-compile", Deployable(model, None, (3, 8, 8)), "fp32", threads=1, workdir=tmp_path)
    assert sess.info["compile_s"] == {}
    run = sess.runner(3)
    assert set(sess.info["compile_s"]) == {3} and sess.info["compile_s"][3] > 0
    lat = measure_latency(run, batch_size=3, warmup=1, min_iters=3, min_time_s=0.0)
    assert lat.iterations >= 3
    assert set(sess.info["compile_s"]) == {3}  # timed calls did not compile again
    x = np.random.default_rng(1).standard_normal((5, 3, 8, 8), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(x), ref, rtol=1e-4, atol=1e-5)  # frozen, BN folded: same function
    assert set(sess.info["compile_s"]) == {3, 5}
    assert "freezing" in sess.info["provider"]


def test_without_a_cxx_compiler_the_engine_is_unavailable_with_the_reason(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    row = next(r for r in engine_status() if r["name"] == "torch-compile")
    assert not row["available"] and "needs a C++ compiler" in row["reason"]
    with pytest.raises(QuantbenchError, match="engine 'torch-compile' is not available: .*C\\+\\+ compiler"):
        load_session("torch-compile", Deployable(_model(), None, (3, 8, 8)), "fp32")


def test_compiled_sessions_never_time_eager_code_past_the_recompile_limit(tmp_path, monkeypatch):
    """Dynamo silently ran eager past its limit (seen on an H200): sequential sessions start from an empty
    cache, and a limit still reached by live sessions is a one-line refusal, never an eager timing."""
    ok, reason = ENGINES.get("torch-compile").available()
    if not ok:
        pytest.skip(reason)
    import torch._dynamo
    from torch._dynamo.utils import counters

    from quantbench.engines import torch_compile_engine

    monkeypatch.setattr(torch_compile_engine, "RECOMPILE_LIMIT", 2)
    deployable = Deployable(_model(), None, (3, 8, 8))
    with torch._dynamo.config.patch(recompile_limit=2):
        for batch in (2, 3, 4):  # one session at a time, three shapes: each one compiles a graph
            graphs = counters["stats"]["unique_graphs"]
            sess = load_session("torch-compile", deployable, "fp32", threads=1, workdir=tmp_path)
            sess.runner(batch)
            assert counters["stats"]["unique_graphs"] == graphs + 1
            del sess
        live = [load_session("torch-compile", deployable, "fp32", threads=1, workdir=tmp_path) for _ in range(3)]
        live[0].runner(2)
        live[1].runner(3)
        with pytest.raises(QuantbenchError, match="torch-compile: batch 4 needs graph 3 .*recompile limit.*refused"):
            live[2].runner(4)
