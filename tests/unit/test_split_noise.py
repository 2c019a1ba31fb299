"""Noise-aware training for split computing: the noise mirrors the real feature quantizer, and the
fine-tuning regime (frozen BatchNorm statistics, cloud-only) does what it says."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.models import build_model
from quantbench.splitting.experiment import noise_finetune
from quantbench.splitting.features import FeatureQuantizer
from quantbench.splitting.splitter import split_model


def _relu_features(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, 4, 6, 6, generator=g)) * torch.rand(n, 1, 1, 1, generator=g).add(0.5)


def _unit(fq: FeatureQuantizer, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (lo, span) broadcastable to z, as the quantizer's sample range sees it."""
    flat = z.reshape(len(z), -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    shape = (len(z),) + (1,) * (z.dim() - 1)
    return lo.reshape(shape), (hi - lo).reshape(shape)


@pytest.mark.parametrize("companding", ["none", "mulaw"])
@pytest.mark.parametrize("qbins", [2, 4, 8])
def test_range_ends_and_end_half_bins_get_exactly_the_real_quantization(qbins, companding):
    z = _relu_features()
    fq = FeatureQuantizer(qbins, companding=companding)
    noisy = fq.noise(z, generator=torch.Generator().manual_seed(1))
    real = fq.roundtrip(z)
    lo, span = _unit(fq, z)
    at_ends = (z == lo) | (z == lo + span)
    assert at_ends.float().mean() > 0.3  # post-ReLU: many exact zeros (= each sample's min)
    assert torch.equal(noisy[at_ends], z[at_ends])  # no noise where quantization is exact
    sym, _ = fq.quantize(z)
    end_bins = (sym == 0) | (sym == qbins - 1)
    assert torch.allclose(noisy[end_bins], real[end_bins], atol=1e-6)
    # no clamping bias: the zeros stay zero (clamped U(-d/2, d/2) noise would move them up by d/8 on average)
    assert float(noisy[z == 0].abs().max()) == 0.0


@pytest.mark.parametrize("companding", ["none", "mulaw"])
def test_interior_noise_is_uniform_within_half_a_real_step(companding):
    qbins = 4
    fq = FeatureQuantizer(qbins, companding=companding)
    g = torch.Generator().manual_seed(0)
    z = torch.rand(200, 8, 8, 8, generator=g) * 3.0
    noisy = fq.noise(z, generator=g)
    lo, span = _unit(fq, z)
    y = fq._compress(((z - lo) / span).clamp(0, 1))
    y_noisy = fq._compress(((noisy - lo) / span).clamp(0, 1))
    sym, _ = fq.quantize(z)
    inner = (sym > 0) & (sym < qbins - 1)
    assert inner.float().mean() > 0.3
    delta = 1.0 / (qbins - 1)
    err = (y_noisy - y)[inner] / delta  # in units of the real step of the (companded) unit interval
    assert float(err.abs().max()) <= 0.5 + 1e-4
    assert abs(float(err.mean())) < 0.01  # zero mean
    assert float(err.var()) == pytest.approx(1.0 / 12.0, rel=0.05)  # U(-1/2, 1/2) has variance 1/12
    quarters = torch.histc(err, bins=4, min=-0.5, max=0.5) / err.numel()
    assert torch.allclose(quarters, torch.full((4,), 0.25), atol=0.01)
    if companding == "none":  # uniform levels: in feature units the step is span / (qbins - 1)
        assert ((noisy - z).abs() <= span * delta / 2 + 1e-5).all()


def test_noise_is_seeded_and_random_only_in_the_interior():
    z = _relu_features()
    fq = FeatureQuantizer(4)
    a = fq.noise(z, generator=torch.Generator().manual_seed(3))
    b = fq.noise(z, generator=torch.Generator().manual_seed(3))
    c = fq.noise(z, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    sym, _ = fq.quantize(z)
    inner = (sym > 0) & (sym < 3)
    assert not torch.equal(a[inner], c[inner]) and torch.equal(a[~inner], c[~inner])


@pytest.mark.parametrize("companding", ["none", "mulaw"])
def test_gradients_flow_through_the_noise_everywhere_in_the_range(companding):
    z = _relu_features(8).requires_grad_(True)
    fq = FeatureQuantizer(4, companding=companding)
    fq.noise(z, generator=torch.Generator().manual_seed(0)).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    lo, span = _unit(fq, z.detach())
    inside = z.detach() < lo + span  # (the max's gradient also flows; mu-law's slope is finite there)
    assert (z.grad[inside] > 0).all()  # also in the end half-bins: the error term is a constant
    if companding == "none":
        assert torch.allclose(z.grad, torch.ones_like(z.grad))  # additive noise: identity gradient


def test_calibrated_range_clamps_like_the_quantizer():
    fq = FeatureQuantizer(4, range_mode="calibrated").calibrate(torch.tensor([0.0, 3.0]))
    z = torch.tensor([[-1.0, 0.0, 0.2, 3.0, 5.0]])
    noisy = fq.noise(z, generator=torch.Generator().manual_seed(0))
    assert noisy[0, [0, 1, 2, 3, 4]].tolist() == pytest.approx([0.0, 0.0, 0.0, 3.0, 3.0])
    assert torch.allclose(noisy, fq.roundtrip(z))


# ----------------------------------------------------------------------------- fine-tuning regime


def _tiny_setup():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (48,), generator=g)
    return model, (x, y)


def _bn_stats(m: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)
            for t in (mod.running_mean, mod.running_var)]


def _changed(a: nn.Module, b: nn.Module) -> list[bool]:
    return [not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True)]


def test_cloud_only_finetuning_with_frozen_bn_changes_only_cloud_weights():
    model, data = _tiny_setup()
    before = _bn_stats(model)
    tuned, hist = noise_finetune(model, data, noise_at=3, qbins=4, epochs=1, lr=1e-3)
    assert len(hist.epochs) == 1 and not tuned.training
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(tuned), strict=True))  # stats kept
    sp0, sp1 = split_model(model, 3), split_model(tuned, 3)
    assert not any(_changed(sp0.edge, sp1.edge))  # the edge is frozen
    assert any(_changed(sp0.cloud, sp1.cloud))
    assert all(p.requires_grad for p in tuned.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(model), strict=True))  # the original untouched


def test_all_parts_with_bn_update_and_noise_vs_no_noise_differ():
    model, data = _tiny_setup()
    tuned, _ = noise_finetune(model, data, noise_at=3, qbins=4, epochs=1, lr=1e-3, part="all", freeze_bn=False)
    assert any(not torch.equal(a, b) for a, b in zip(_bn_stats(model), _bn_stats(tuned), strict=True))
    assert any(_changed(split_model(model, 3).edge, split_model(tuned, 3).edge))
    noisy, _ = noise_finetune(model, data, noise_at=3, qbins=4, epochs=1, lr=1e-3)
    plain, _ = noise_finetune(model, data, noise_at=3, qbins=4, epochs=1, lr=1e-3, noise=False)
    again, _ = noise_finetune(model, data, noise_at=3, qbins=4, epochs=1, lr=1e-3, noise=False)
    assert any(_changed(noisy, plain)) and not any(_changed(plain, again))  # seeded: reproducible
    with pytest.raises(QuantbenchError, match="part 'edge' unknown"):
        noise_finetune(model, data, noise_at=3, qbins=4, part="edge")
    with torch.no_grad():
        assert math.isfinite(float(noisy(data[0][:2]).sum()))
