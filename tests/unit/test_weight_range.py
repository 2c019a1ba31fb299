"""``--weight-range auto|full|reduced``: 7-bit weight codes where x86 int8 kernels saturate.

The CPU is faked with ``QUANTBENCH_CPUINFO`` (a cpuinfo file of another machine), so these tests
choose the same way on every machine they run on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from quantbench.engines.base import cpu_flags, int8_saturates
from quantbench.engines.qdq_modules import weight_codes
from quantbench.errors import QuantbenchError
from quantbench.quant.ptq import PTQConfig, parse_method, quantize_ptq, resolve_weight_range
from quantbench.quant.spec import QuantPlan, parse_scheme

AVX2_ONLY = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2\n"
VNNI = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni\n"


@pytest.fixture
def cpu(tmp_path, monkeypatch):
    """``cpu("avx2")`` / ``cpu("vnni")``: this process reads that machine's flags."""

    def use(kind: str) -> Path:
        path = tmp_path / f"cpuinfo-{kind}"
        path.write_text(AVX2_ONLY if kind == "avx2" else VNNI)
        monkeypatch.setenv("QUANTBENCH_CPUINFO", str(path))
        return path

    return use


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()


def test_saturation_follows_cpu_flags() -> None:
    assert int8_saturates({"avx2", "fma"}, "x86_64")[0]
    assert not int8_saturates({"avx2", "avx512_vnni"}, "x86_64")[0]
    assert not int8_saturates({"avx2", "avx_vnni"}, "x86_64")[0]
    assert not int8_saturates({"amx_int8"}, "x86_64")[0]
    assert not int8_saturates({"neon"}, "aarch64")[0]
    assert "VNNI" in int8_saturates({"avx2"}, "x86_64")[1]


def test_fake_cpuinfo_is_read(cpu) -> None:
    cpu("avx2")
    assert "avx2" in cpu_flags() and "avx512_vnni" not in cpu_flags()
    cpu("vnni")
    assert "avx512_vnni" in cpu_flags()


@pytest.mark.parametrize(("kind", "expected"), [("avx2", "reduced"), ("vnni", "full")])
def test_auto_picks_the_grid_for_the_cpu(cpu, monkeypatch, kind: str, expected: str) -> None:
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    cpu(kind)
    cfg, why = resolve_weight_range(parse_method("w8a8:mse"), "auto")
    assert cfg.weight_range == expected and why.startswith(f"{expected} (auto")
    assert cfg.label() == ("w8a8:mse-reduced" if expected == "reduced" else "w8a8:mse")


def test_explicit_choice_and_methods_it_cannot_change(cpu) -> None:
    cpu("avx2")
    assert resolve_weight_range(parse_method("w8a8"), "full")[0].weight_range == "full"
    assert resolve_weight_range(parse_method("w8a8"), "reduced")[0].weight_range == "reduced"
    for method in ("w4a8", "w8", "dynamic", "w8a4"):  # no 8-bit weights meeting u8 activations
        cfg, why = resolve_weight_range(parse_method(method), "auto")
        assert cfg.plan().weight_range == "full" and "reduced" not in cfg.label(), method


def test_reduced_grid_in_the_plan_and_the_simulation() -> None:
    plan = parse_scheme("w8a8", first_last="int8").replace(weight_range="reduced")
    for first in (True, False):
        spec = plan.for_layer("x", is_first=first)
        assert (spec.weight.bits, spec.weight.qmin, spec.weight.qmax) == (7, -64, 63)
        assert spec.act.bits == 8
    assert QuantPlan.from_dict(plan.as_dict()) == plan
    assert "weight_range" not in parse_scheme("w8a8").as_dict()  # older files read back unchanged
    qm = quantize_ptq(_net(), PTQConfig("w8a8", "minmax", calib_size=16, weight_range="reduced"),
                      torch.randn(16, 3, 8, 8))
    layers = [(n, m) for n, m in qm.net.named_modules() if hasattr(m, "weight_fq")]
    assert len(layers) == 2
    for name, layer in layers:
        codes = weight_codes(layer, name)[0]
        assert codes.min() >= -64 and codes.max() <= 63 and codes.abs().max() >= 60, name


def test_label_round_trip_and_refusals() -> None:
    cfg = PTQConfig("w8a8", "mse", weight_range="reduced")
    assert cfg.label() == "w8a8:mse-reduced" and parse_method(cfg.label()) == cfg
    with pytest.raises(QuantbenchError, match="says reduced but weight_range is full"):
        resolve_weight_range(parse_method("w8a8:mse-reduced"), "full")
    with pytest.raises(QuantbenchError, match="weight_range 'half' unknown"):
        resolve_weight_range(parse_method("w8a8"), "half")
    with pytest.raises(QuantbenchError, match="weight_range 'half' unknown"):
        PTQConfig("w8a8", weight_range="half").plan()


def test_ort_stores_reduced_codes_as_s8_even_where_full_codes_need_u8(monkeypatch) -> None:
    from quantbench.engines.export_qdq import ort_weight_type

    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    x = torch.randn(16, 3, 8, 8)
    full = quantize_ptq(_net(), PTQConfig("w8a8", "minmax", calib_size=16), x)
    reduced = quantize_ptq(_net(), PTQConfig("w8a8", "minmax", calib_size=16, weight_range="reduced"), x)
    avx2, vnni = {"avx2", "fma"}, {"avx2", "avx512_vnni"}
    assert ort_weight_type(full, avx2) == "uint8" and ort_weight_type(reduced, avx2) == "int8"
    assert ort_weight_type(full, vnni) == "int8"


def test_cli_records_the_choice_and_refuses_a_bad_value(cpu, monkeypatch, capsys, tmp_path) -> None:
    from quantbench.cli import main

    cpu("avx2")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    base = ["quantize", "--model", "lenet", "--data", "synthetic:n=200,shape=1x8x8,classes=10,seed=0",
            "--calib-size", "32", "--no-store", "--no-progress", "--out", str(tmp_path / "r")]
    assert main([*base, "--weight-range", "half"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "weight" in err and "half" in err and len(err.strip().splitlines()) == 1
    assert main([*base, "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["method"] == "w8a8:mse-reduced"
    assert record["weight_range"].startswith("weight range reduced (auto: x86 CPU without VNNI")
    assert main([*base, "--weight-range", "full", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["method"] == "w8a8:mse" and record["weight_range"] == "weight range full (asked for)"
