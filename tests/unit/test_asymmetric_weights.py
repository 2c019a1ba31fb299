"""``-asym``: weights below 8 bits on an asymmetric per-channel grid, deployed as re-centred int8 codes.

Engine parity (every int8 engine runs the asymmetric 4-bit model as simulated, on integer kernels) is in
tests/contracts/test_engines.py; here: the plan, the method label, the codes engines receive, the file.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantbench.engines.qdq_modules import weight_codes
from quantbench.errors import QuantbenchError
from quantbench.quant.fake import deployed_codes, dequantize, fake_quantize, quantize
from quantbench.quant.ptq import PTQConfig, parse_method, quantize_ptq
from quantbench.quant.save import load_quantized, save_quantized
from quantbench.quant.spec import QuantSpec, deployed_code_range, parse_scheme


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 4)).eval()


def test_plan_low_bit_weights_asymmetric_eight_bit_edges_symmetric() -> None:
    plan = parse_scheme("w4a4", asymmetric_weights=True, first_last="int8")
    assert not plan.default.weight.symmetric and plan.default.weight.bits == 4
    edge = plan.for_layer("conv", is_first=True)
    assert edge.weight.bits == 8 and edge.weight.symmetric  # int8 kernels' grid at 8 bits
    assert plan.has_asymmetric_weights and not parse_scheme("w4a4").has_asymmetric_weights
    assert parse_scheme("w8a8", asymmetric_weights=True).default.weight.symmetric
    assert not parse_scheme("w2", asymmetric_weights=True).default.weight.symmetric
    assert parse_scheme("w4a8").default.weight.symmetric  # the default is unchanged


def test_method_tag_round_trip_and_refusals() -> None:
    cfg = parse_method("w4a8:adaround-flint8-asym")
    assert cfg.asymmetric_weights and cfg.label() == "w4a8:adaround-asym-flint8"
    assert parse_method(cfg.label()) == cfg
    assert parse_method("w4a8:adaround").label() == "w4a8:adaround"
    assert parse_method("w4a8:adaround").plan().default.weight.symmetric
    with pytest.raises(QuantbenchError, match=r"'asym' applies to weights below 8 bits; w8a8 has none"):
        parse_method("w8a8:mse-asym")
    with pytest.raises(QuantbenchError, match=r"'noasym' applies to weights below 8 bits; w8a8 has none"):
        parse_method("w8a8:qdrop-noasym")


@pytest.mark.parametrize("algo", ["brecq", "qdrop"])
def test_block_reconstruction_uses_the_published_asymmetric_grid_unless_told_not_to(algo: str) -> None:
    cfg = parse_method(f"w4a4:{algo}-flint8")
    assert not cfg.plan().default.weight.symmetric and cfg.label() == f"w4a4:{algo}-flint8"
    assert cfg.resolved().asymmetric_weights is True  # what a stored result says it used
    sym = parse_method(f"w4a4:{algo}-flint8-noasym")
    assert sym.plan().default.weight.symmetric and sym.label() == f"w4a4:{algo}-noasym-flint8"
    assert parse_method(sym.label()) == sym
    assert parse_method(f"w4a4:{algo}-asym").label() == f"w4a4:{algo}"  # the default: no tag
    assert parse_method(f"w8a8:{algo}").plan().default.weight.symmetric  # 8-bit weights: nothing to change
    # mu-law levels are centred on 0: the default gives way (reconstruction then refuses companding itself)
    assert parse_method(f"w4a4:{algo}-mulaw").plan().default.weight.symmetric
    with pytest.raises(QuantbenchError, match="cannot be mulaw-companded"):
        parse_method(f"w4a4:{algo}-asym-mulaw")
    with pytest.raises(QuantbenchError, match="cannot be mulaw-companded"):
        parse_method("w4a8:mse-asym-mulaw")


@pytest.mark.parametrize("bits", [2, 4, 7])
def test_deployed_codes_are_the_simulated_values_with_zero_point_0(bits: int) -> None:
    spec = QuantSpec(bits=bits, symmetric=False, per_channel=True)
    g = torch.Generator().manual_seed(bits)
    w = torch.rand(6, 3, 3, 3, generator=g) * torch.tensor([1.0, 2, 3, 4, 5, 6]).view(-1, 1, 1, 1) - 0.4
    scale = (w.amax(dim=(1, 2, 3)) - w.amin(dim=(1, 2, 3)).clamp(max=0)) / (spec.qmax - spec.qmin)
    zp = torch.clamp(torch.round(spec.qmin - w.amin(dim=(1, 2, 3)).clamp(max=0) / scale), spec.qmin, spec.qmax)
    zp = zp.to(torch.int32)
    assert bool((zp != 0).any())
    codes, z0 = deployed_codes(w, scale, zp, spec)
    assert bool((z0 == 0).all()) and z0.shape == zp.shape
    lo, hi = deployed_code_range(spec)
    assert lo == -(2**bits - 1) and hi == 2**bits - 1 and hi <= 127
    assert int(codes.min()) >= lo and int(codes.max()) <= hi
    sim = fake_quantize(w, scale, zp, spec)
    assert torch.equal(codes.float() * scale.view(-1, 1, 1, 1), sim)  # the same values, bit for bit
    assert torch.equal(dequantize(quantize(w, scale, zp, spec), scale, zp, spec), sim)


def test_symmetric_and_eight_bit_asymmetric_codes_are_left_as_they_are() -> None:
    w = torch.randn(4, 5)
    for spec in (QuantSpec(bits=4, per_channel=True), QuantSpec(bits=8, symmetric=False, per_channel=True)):
        scale, zp = torch.full((4,), 0.05), torch.full((4,), 3 if not spec.symmetric else 0, dtype=torch.int32)
        codes, z = deployed_codes(w, scale, zp, spec)
        assert torch.equal(codes, quantize(w, scale, zp, spec)) and torch.equal(z, zp)
        assert deployed_code_range(spec) == (spec.qmin, spec.qmax)


def test_asymmetric_grid_fits_one_sided_weights_better_and_exports_as_int8() -> None:
    """All-positive channels: the symmetric grid wastes its negative half, the asymmetric one does not."""
    net = _net()
    with torch.no_grad():
        net[2].weight.abs_()
    x = torch.randn(32, 3, 8, 8)
    sym = quantize_ptq(net, PTQConfig("w4a8", "minmax", calib_size=32), x)
    asym = quantize_ptq(net, PTQConfig("w4a8", "minmax", calib_size=32, asymmetric_weights=True), x)

    def weight_error(qm) -> float:
        layer = qm.layer("2")
        with torch.no_grad():
            return float((layer.weight_fq(layer.weight) - layer.weight).pow(2).mean())

    assert weight_error(asym) < 0.4 * weight_error(sym)
    codes, scale, zp, axis = weight_codes(asym.layer("2"), "2")
    assert codes.dtype == torch.int8 and bool((zp == 0).all()) and axis == 0
    assert int(codes.min()) >= 0  # one-sided weights: re-centred codes 0..15
    layer = asym.layer("2")
    with torch.no_grad():
        assert torch.equal(codes.float() * scale.view(-1, 1, 1, 1), layer.weight_fq(layer.weight))


def test_file_round_trip_keeps_the_zero_points(tmp_path) -> None:
    x = torch.randn(32, 3, 8, 8)
    qm = quantize_ptq(_net(), PTQConfig("w4a8", "mse", calib_size=32, asymmetric_weights=True), x)
    sym = quantize_ptq(_net(), PTQConfig("w4a8", "mse", calib_size=32), x)
    path, path_sym = tmp_path / "asym.qbm", tmp_path / "sym.qbm"
    save_quantized(qm, path, model_name="net")
    save_quantized(sym, path_sym, model_name="net")
    back = load_quantized(path, _net())
    with torch.no_grad():
        assert torch.equal(back(x), qm(x))
    zps = [fq.zero_point for _, fq in back.weight_quantizers()]
    assert any(bool((z != 0).any()) for z in zps)
    # the zero points cost a few bytes per channel, not a wider code
    assert 0 < path.stat().st_size - path_sym.stat().st_size < 200
