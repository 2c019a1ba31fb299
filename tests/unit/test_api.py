"""The public Python API: cheap to import, typed, its docstring examples run, in-memory models and data work."""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest
import torch

import quantbench as qb
from quantbench import api
from quantbench.errors import QuantbenchError


def test_docstring_examples_run():
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


def test_import_is_cheap_and_typed():
    code = "import sys, quantbench as qb; print(sorted(m for m in ('torch', 'onnxruntime', 'openvino', 'ray', " \
           "'matplotlib') if m in sys.modules)); print(callable(qb.quantize))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"  # nothing heavy until a function is used
    assert out[1] == "True"
    from importlib.resources import files

    assert files("quantbench").joinpath("py.typed").is_file()
    assert set(api.__all__) <= set(qb.__all__)
    with pytest.raises(AttributeError):
        qb.nosuch  # noqa: B018


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()


def test_quantize_takes_strings_and_config_objects_and_any_data_form():
    from quantbench.config import TrainConfig
    from quantbench.quant.ptq import PTQConfig
    from quantbench.quant.qat import QATConfig

    net, x = _net(), torch.randn(48, 1, 8, 8)
    y = torch.randint(0, 10, (48,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    for method, data in (("w8a8", x), ("w4a8:minmax-pt", (x, y)), (PTQConfig("w8a8", "entropy"), loader),
                         ("dynamic", None), ("w8a8", "digits")):
        qm = qb.quantize(net, method, data, calib_size=32)
        assert qm(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert qb.quantize(net, "w4a8:minmax-pt", x).plan.default.weight.per_channel is False
    qat = qb.quantize(net, QATConfig(scheme="w4a4", train=TrainConfig(epochs=1, lr=1e-3, optimizer="adamw")), (x, y))
    assert qat.plan.scheme == "w4a4"
    mixed = qb.quantize(net, qb.MixedPrecision(avg_bits=4, bits=(2, 4, 8)), x)
    assert {s.weight.bits for s in mixed.plan.overrides.values()} <= {2, 4, 8}
    with pytest.raises(QuantbenchError, match="unknown algorithm"):
        qb.quantize(net, "w8a8:nosuch", x)
    with pytest.raises(QuantbenchError, match="expected a data spec string, a tensor"):
        qb.quantize(net, "w8a8", 42)
    with pytest.raises(QuantbenchError, match="exactly one of budget_kb and avg_bits"):
        qb.quantize(net, qb.MixedPrecision(), x)


def test_bench_deploys_the_quantized_model_it_is_given():
    net = _net()
    qm = qb.quantize(net, "w8a8:minmax", torch.randn(32, 1, 8, 8))
    r = qb.bench(qm, engines=["onnxruntime"], variants=["int8"], batch_sizes=[1], min_time_s=0.01, peaks=False)
    assert r.quantized_from == "the quantized model passed in"
    assert {(x["engine"], x["variant"]) for x in r.records} == {("torch", "fp32"), ("onnxruntime", "int8")}


def test_split_and_run_with_in_memory_model_and_data(tmp_path):
    net = _net()
    x, y = torch.randn(80, 1, 8, 8), torch.randint(0, 10, (80,))
    rec = qb.split(net, (x, y), splits=(1,), qbins=(4,), companding=("none",), calib_size=20)
    (r,) = rec["records"]
    assert r["split"] == 1 and r["n_images"] == 60
    out = qb.run("eval", model=net, data=(x, y), store=str(tmp_path / "q.db"))
    assert out.record["n_images"] == 80 and out.record["model"] == "Sequential" and out.report_html.is_file()
