"""quantize / dequantize / fake_quantize (STE), LSQ gradients and the FakeQuant module."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.fake import (
    EPS,
    FakeQuant,
    dequantize,
    fake_quantize,
    lsq_fake_quantize,
    lsq_grad_scale,
    quantize,
)
from quantbench.quant.observers import EmaMinMaxObserver, compute_qparams
from quantbench.quant.spec import QuantSpec

specs = st.builds(
    QuantSpec,
    bits=st.integers(2, 16),
    signed=st.booleans(),
    symmetric=st.booleans(),
)
values = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=64)


def _params(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return compute_qparams(x.min(), x.max(), spec)


@settings(max_examples=100, deadline=None)
@given(xs=values, spec=specs)
def test_error_is_at_most_half_a_step_inside_the_range(xs, spec):
    x = torch.tensor(xs)
    scale, zp = _params(x, spec)
    lo, hi = (spec.qmin - zp) * scale, (spec.qmax - zp) * scale
    inside = (x >= lo) & (x <= hi)
    xq = dequantize(quantize(x, scale, zp, spec), scale, zp, spec)
    err = (xq - x).abs()
    # half a step, plus float32 rounding of x / scale and (q - zp) * scale (matters at 12-16 bits)
    slack = 4 * torch.finfo(torch.float32).eps * torch.maximum(x.abs(), xq.abs())
    assert (err[inside] <= scale / 2 + slack[inside]).all()


@settings(max_examples=100, deadline=None)
@given(xs=values, spec=specs)
def test_fake_quantize_is_idempotent_and_matches_dequant_of_quant(xs, spec):
    x = torch.tensor(xs)
    scale, zp = _params(x, spec)
    once = fake_quantize(x, scale, zp, spec)
    assert torch.equal(fake_quantize(once, scale, zp, spec), once)
    assert torch.equal(once, dequantize(quantize(x, scale, zp, spec), scale, zp, spec))


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), signed=st.booleans(), narrow=st.booleans(), seed=st.integers(0, 2**16))
def test_at_most_2_pow_bits_levels(bits, signed, narrow, seed):
    spec = QuantSpec(bits=bits, signed=signed, symmetric=signed, narrow_range=narrow and signed)
    x = torch.randn(5000, generator=torch.Generator().manual_seed(seed)) * 3
    scale, zp = compute_qparams(-2.0, 2.0, spec)  # clips the tails: every code gets used
    q = quantize(x, scale, zp, spec)
    assert q.dtype == torch.int32 and q.min() >= spec.qmin and q.max() <= spec.qmax
    assert len(fake_quantize(x, scale, zp, spec).unique()) <= spec.levels <= 2**bits


@settings(max_examples=60, deadline=None)
@given(xs=values, spec=specs)
def test_matches_onnx_quantizelinear_reference(xs, spec):
    """ONNX: y = saturate(round_half_even(x / y_scale) + y_zero_point), computed in float32."""
    x = torch.tensor(xs)
    scale, zp = _params(x, spec)
    ref = np.rint(x.numpy() / np.float32(scale.item())) + int(zp)
    ref = np.clip(ref, spec.qmin, spec.qmax).astype(np.int32)
    np.testing.assert_array_equal(quantize(x, scale, zp, spec).numpy(), ref)


def test_round_half_to_even_like_onnx():
    spec = QuantSpec(bits=8)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    assert quantize(x, 1.0, 0, spec).tolist() == [0, 2, 2, 0, -2, -2]
    assert quantize(torch.tensor([1000.0, -1000.0]), 1.0, 0, spec).tolist() == [127, -128]


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_broadcasts_along_axis(axis):
    spec = QuantSpec(bits=4, per_channel=True, axis=axis)
    x = torch.randn(3, 4, 5) * torch.tensor([0.1, 1.0, 10.0, 100.0, 1000.0])  # channels differ
    dim = axis % x.dim()
    red = [d for d in range(x.dim()) if d != dim]
    scale, zp = compute_qparams(x.amin(dim=red), x.amax(dim=red), spec)
    assert scale.shape == (x.shape[dim],)
    out = fake_quantize(x, scale, zp, spec)
    per_tensor = spec.replace(per_channel=False)
    for c in range(x.shape[dim]):
        xc = x.select(dim, c)
        sc, zc = compute_qparams(xc.min(), xc.max(), per_tensor)
        torch.testing.assert_close(scale[c], sc)
        assert torch.equal(out.select(dim, c), fake_quantize(xc, sc, zc, per_tensor))


def test_ste_gradient_mask():
    spec = QuantSpec(bits=8, signed=False, symmetric=False)
    scale, zp = compute_qparams(0.0, 2.55, spec)  # representable range [0, 2.55]
    x = torch.tensor([-1.0, -0.001, 0.0, 1.234, 2.55, 2.6, 10.0], requires_grad=True)
    fake_quantize(x, scale, zp, spec).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # -0.001 still rounds to code 0


def test_ste_mask_for_companded_specs():
    spec = QuantSpec(bits=4, companding="mulaw")
    x = torch.tensor([-3.0, -0.5, 0.1, 0.7, 2.0], requires_grad=True)
    out = fake_quantize(x, torch.tensor(1.0 / spec.qmax), 0, spec)  # clipping magnitude 1.0
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert out[0].item() == -1.0 and out[-1].item() == 1.0


def test_no_graph_without_requires_grad():
    out = fake_quantize(torch.randn(10), 0.1, 0, QuantSpec())
    assert not out.requires_grad and out.dtype == torch.float32


@pytest.mark.parametrize("spec", [QuantSpec(bits=8, signed=False, symmetric=False),
                                  QuantSpec(bits=4, per_channel=True, axis=1), QuantSpec(bits=3, companding="mulaw")])
def test_evaluation_path_gives_the_training_paths_values_bit_for_bit(spec):
    # without a gradient the quantizer skips the mask and works in place: the same operations in the same order
    x = torch.randn(4, 6, 5, 5) * 3  # float32: the quantizer's float32 view of x is x itself
    scale = torch.rand(6) * 0.2 + 0.05 if spec.per_channel else torch.tensor(0.07)
    zp = torch.zeros(6, dtype=torch.int32) if spec.per_channel else (torch.tensor(9) if not spec.signed else 0)
    kept = x.clone()
    evaluated = fake_quantize(x, scale, zp, spec)
    trained = fake_quantize(x.clone().requires_grad_(), scale, zp, spec)
    assert torch.equal(x, kept)  # the input is never written
    assert evaluated.dtype == trained.dtype == torch.float32 and torch.equal(evaluated, trained.detach())


def _lsq_case(spec: QuantSpec):
    x = torch.tensor([-9.0, -1.26, -0.4, 0.0, 0.33, 0.74, 1.5, 7.7], dtype=torch.float64)
    weights = torch.linspace(0.5, 2.0, x.numel(), dtype=torch.float64)  # a non-trivial upstream grad
    return x, weights


@pytest.mark.parametrize(
    "spec", [QuantSpec(bits=3), QuantSpec(bits=4, signed=False, symmetric=False), QuantSpec(bits=2)]
)
def test_lsq_gradients_match_the_paper_formula(spec):
    x, w = _lsq_case(spec)
    zp_val = 3 if not spec.symmetric else 0
    s0 = 0.37
    g = lsq_grad_scale(x.numel(), spec)
    assert g == pytest.approx(1 / np.sqrt(x.numel() * spec.qmax))
    xr = x.clone().requires_grad_(True)
    scale = nn.Parameter(torch.tensor(s0, dtype=torch.float64))
    out = lsq_fake_quantize(xr, scale, torch.tensor(zp_val), spec, g)
    torch.testing.assert_close(out, fake_quantize(x, s0, zp_val, spec).to(torch.float64))
    (out * w).sum().backward()

    v = x.numpy() / s0
    t = np.rint(v) + zp_val
    below, above = t < spec.qmin, t > spec.qmax
    inside = ~(below | above)
    dsdv = np.where(inside, np.rint(v) - v, np.where(below, spec.qmin - zp_val, spec.qmax - zp_val))
    assert scale.grad.item() == pytest.approx(g * float((w.numpy() * dsdv).sum()), rel=1e-9)
    np.testing.assert_allclose(xr.grad.numpy(), w.numpy() * inside, rtol=1e-12)
    assert below.any() and above.any() and inside.any()  # the case covers all three branches


def test_lsq_scale_gradient_matches_finite_differences_of_the_ste_surrogate():
    """LSQ's d/ds is the exact derivative of s * clip(x/s + delta) with the rounding offset
    delta = round(x/s0) - x/s0 held fixed (the straight-through surrogate); check it numerically."""
    spec = QuantSpec(bits=3)
    x, w = _lsq_case(spec)
    s0, g = 0.37, 1.0
    delta = torch.round(x / s0) - x / s0

    def surrogate(s: float) -> float:
        return float((w * s * torch.clamp(x / s + delta, spec.qmin, spec.qmax)).sum())

    h = 1e-6
    numeric = (surrogate(s0 + h) - surrogate(s0 - h)) / (2 * h)
    scale = nn.Parameter(torch.tensor(s0, dtype=torch.float64))
    (lsq_fake_quantize(x, scale, torch.tensor(0), spec, g) * w).sum().backward()
    assert scale.grad.item() == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_lsq_per_channel_gradient_shape():
    spec = QuantSpec(bits=4, per_channel=True, axis=0)
    x = torch.randn(3, 5)
    scale = nn.Parameter(torch.full((3,), 0.2))
    lsq_fake_quantize(x, scale, torch.zeros(3, dtype=torch.int32), spec, 0.5).sum().backward()
    assert scale.grad.shape == (3,) and torch.isfinite(scale.grad).all()
    with pytest.raises(QuantbenchError, match="companding"):
        lsq_fake_quantize(x, scale, 0, spec.replace(companding="mulaw"), 0.5)


# ----------------------------------------------------------------------------- FakeQuant


def test_fakequant_observe_freeze_quant_off():
    spec = QuantSpec(bits=8, signed=False, symmetric=False)
    fq = FakeQuant(spec)
    assert fq.mode == "observe"
    x = torch.rand(4, 3, 5, 5) * 2 - 0.5
    assert fq(x) is x  # observing changes nothing
    with pytest.raises(QuantbenchError, match="freeze"):
        fq.mode = "quant"
        fq(x)
    fq.mode = "observe"
    assert fq.freeze() is fq and fq.mode == "quant" and fq.calibrated
    scale, zp = fq.observer.qparams()
    assert torch.equal(fq.scale, scale) and torch.equal(fq.zero_point, zp)
    assert torch.equal(fq(x), fake_quantize(x, scale, zp, spec))
    fq.mode = "off"
    assert fq(x) is x
    with pytest.raises(QuantbenchError, match="mode"):
        fq.mode = "train"
    assert "uint8-asym" in repr(fq) and "role=act" in repr(fq)


def test_freeze_without_calibration_is_a_user_error():
    with pytest.raises(QuantbenchError, match="no data"):
        FakeQuant(QuantSpec()).freeze()


def test_fakequant_per_channel_weight_and_state_dict_into_a_fresh_module():
    spec = QuantSpec(bits=4, per_channel=True, axis=0, observer="mse")
    weight = torch.randn(6, 3, 3, 3) * torch.linspace(0.1, 2.0, 6)[:, None, None, None]
    fq = FakeQuant(spec, role="weight")
    fq(weight)
    fq.freeze()
    assert fq.scale.shape == (6,) and fq.zero_point.shape == (6,)
    fresh = FakeQuant(spec, role="weight")
    fresh.load_state_dict(fq.state_dict())  # scalar placeholders adopt the saved [C] shapes
    fresh.mode = "quant"
    assert fresh.calibrated and torch.equal(fresh(weight), fq(weight))
    assert torch.equal(copy.deepcopy(fq)(weight), fq(weight))


def test_observe_plus_quant_tracks_the_observer_each_batch():
    spec = QuantSpec(bits=8, signed=False, symmetric=False)
    fq = FakeQuant(spec, observer=EmaMinMaxObserver(spec, momentum=0.5))
    fq.mode = "observe+quant"
    fq(torch.tensor([0.0, 1.0]))
    first = fq.scale.clone()
    fq(torch.tensor([0.0, 3.0]))
    torch.testing.assert_close(fq.scale, first * 2)  # hi: 1 -> 1 + 0.5 * (3 - 1) = 2


def test_dynamic_spec_uses_each_batch_range_without_calibration():
    spec = QuantSpec(bits=8, signed=False, symmetric=False, dynamic=True)
    fq = FakeQuant(spec)
    fq.mode = "quant"
    for hi in (1.0, 100.0):
        x = torch.linspace(-0.2 * hi, hi, 257)
        scale, zp = compute_qparams(x.min(), x.max(), spec)
        assert torch.equal(fq(x), fake_quantize(x, scale, zp, spec))
    assert fq.freeze().mode == "quant"  # nothing to freeze, and no error
    with pytest.raises(QuantbenchError, match="learnable"):
        FakeQuant(spec, learnable=True)


def test_learnable_scale_becomes_a_parameter_and_trains():
    spec = QuantSpec(bits=4)
    fq = FakeQuant(spec, learnable=True, role="weight")
    w = torch.randn(64)
    fq(w)
    fq.freeze()
    assert isinstance(fq.scale, nn.Parameter)
    torch.testing.assert_close(fq.scale.detach(), fq.observer.qparams()[0])
    assert torch.equal(fq(w), fake_quantize(w, fq.scale.detach(), 0, spec))  # same values as PTQ
    opt = torch.optim.SGD(fq.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((fq(w) - w) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert fq.qparams()[0] >= EPS
    fresh = FakeQuant(spec, learnable=True, role="weight")
    fresh.load_state_dict(fq.state_dict())
    assert isinstance(fresh.scale, nn.Parameter) and fresh.calibrated
    torch.testing.assert_close(fresh.scale, fq.scale)


def test_fakequant_rejects_bad_arguments():
    with pytest.raises(QuantbenchError, match="role"):
        FakeQuant(QuantSpec(), role="bias")
    with pytest.raises(TypeError):
        FakeQuant("int8")  # type: ignore[arg-type]


def test_fakequant_in_a_model_trains_end_to_end():
    torch.manual_seed(0)
    lin = nn.Linear(8, 1)
    act_fq = FakeQuant(QuantSpec(bits=8, signed=False, symmetric=False), learnable=True)
    x = torch.rand(64, 8)
    act_fq(x)
    act_fq.freeze()
    target = x.sum(dim=1, keepdim=True)
    opt = torch.optim.Adam(
        [{"params": lin.parameters()}, {"params": act_fq.parameters(), "lr": 1e-3}], lr=0.05
    )
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = ((lin(act_fq(x)) - target) ** 2).mean()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first / 10
    assert act_fq.scale.grad is not None and act_fq.scale.grad.abs() > 0


def test_learnable_scale_that_crosses_zero_keeps_learning():
    fq = FakeQuant(QuantSpec(bits=4), learnable=True, role="weight")
    w = torch.randn(32)
    fq(w)
    fq.freeze()
    with torch.no_grad():
        fq.scale.neg_()  # what one large optimizer step can do
    assert torch.equal(fq(w), fake_quantize(w, -fq.scale.detach(), 0, fq.spec))
    ((fq(w) - w) ** 2).sum().backward()
    assert fq.scale.grad.abs() > 0
