"""Mu-law companding: exact inverse, non-uniform levels dense near 0, lower error on bell-shaped data."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantbench.quant.companding import companded_fake_quant, compress, expand
from quantbench.quant.fake import fake_quantize
from quantbench.quant.observers import compute_qparams
from quantbench.quant.spec import QuantSpec

unit = st.floats(-1.0, 1.0, allow_nan=False, width=32)


@settings(max_examples=80, deadline=None)
@given(xs=st.lists(unit, min_size=1, max_size=64), mu=st.floats(1.0, 1000.0))
def test_expand_inverts_compress(xs, mu):
    x = torch.tensor(xs, dtype=torch.float32)
    y = compress(x, mu)
    assert (y.abs() <= 1.0 + 1e-6).all()
    torch.testing.assert_close(expand(y, mu), x, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(compress(expand(x, mu), mu), x, atol=2e-6, rtol=1e-5)


def test_compress_is_odd_monotonic_and_fixes_the_ends():
    x = torch.linspace(-1, 1, 1001)
    y = compress(x, 255.0)
    assert (y[1:] > y[:-1]).all()
    torch.testing.assert_close(compress(-x, 255.0), -y)
    torch.testing.assert_close(
        compress(torch.tensor([-1.0, 0.0, 1.0]), 255.0), torch.tensor([-1.0, 0.0, 1.0])
    )


def test_levels_are_dense_near_zero_and_at_most_2_pow_bits():
    spec = QuantSpec(bits=4, companding="mulaw", mu=255.0)
    levels = companded_fake_quant(torch.linspace(-2, 2, 20001), 1.0, spec).unique()
    assert len(levels) <= 2**4
    assert levels.min() == -1.0 and levels.max() == 1.0 and (levels == 0).any()
    gaps = levels[1:] - levels[:-1]
    assert gaps.min() < gaps.max() / 20  # strongly non-uniform
    positive = levels[levels >= 0]
    assert ((positive[1:] - positive[:-1]).diff() > 0).all()  # gaps grow away from 0


def test_unsigned_companding_uses_all_codes_on_0_max():
    spec = QuantSpec(bits=3, signed=False, companding="mulaw", mu=31.0)
    levels = companded_fake_quant(torch.linspace(-1, 3, 4001), 2.0, spec).unique()
    assert len(levels) == 8 and levels.min() == 0.0 and levels.max() == 2.0


@settings(max_examples=50, deadline=None)
@given(xs=st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=64), bits=st.integers(2, 12))
def test_companded_fake_quant_is_idempotent(xs, bits):
    spec = QuantSpec(bits=bits, companding="mulaw")
    x = torch.tensor(xs)
    once = companded_fake_quant(x, 2.5, spec)
    torch.testing.assert_close(companded_fake_quant(once, 2.5, spec), once, atol=1e-6, rtol=0)


def test_mulaw_beats_uniform_on_laplacian_weights():
    x = torch.distributions.Laplace(0.0, 1.0).sample((20000,))
    for bits in (3, 4, 6):
        uniform = QuantSpec(bits=bits)
        mulaw = uniform.replace(companding="mulaw", mu=15.0)
        scale, zp = compute_qparams(x.min(), x.max(), uniform)
        err_u = ((fake_quantize(x, scale, zp, uniform) - x) ** 2).mean()
        err_m = ((fake_quantize(x, scale, zp, mulaw) - x) ** 2).mean()
        assert err_m < 0.5 * err_u
