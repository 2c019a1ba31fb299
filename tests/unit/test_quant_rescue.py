"""Low-bit rescue methods: cross-layer equalization, bias correction, AdaRound.

Tiny synthetic models and random images (CPU, a few seconds in all).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.models import build_model
from quantbench.quant.adaround import adaround, rectified_sigmoid
from quantbench.quant.bias_correction import bias_correction
from quantbench.quant.equalize import cross_layer_equalize, equalization_pairs, equalize_folded
from quantbench.quant.fake import broadcast_param, fake_quantize
from quantbench.quant.fold import fold_batchnorm
from quantbench.quant.prepare import calibrate, prepare
from quantbench.quant.spec import parse_scheme


class Tiny(nn.Module):
    """conv-BN-ReLU -> depthwise conv-BN-ReLU -> conv-BN-ReLU -> maxpool -> flatten -> linear."""

    def __init__(self, relu6: bool = False, spread: float = 0.0) -> None:
        super().__init__()
        act = nn.ReLU6 if relu6 else nn.ReLU
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = act()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.act2 = act()
        self.conv3 = nn.Conv2d(8, 6, 1)
        self.bn3 = nn.BatchNorm2d(6)
        self.act3 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 5)
        g = torch.Generator().manual_seed(1)
        for bn in (self.bn1, self.bn2, self.bn3):
            c = bn.num_features
            # BN gammas spanning 10^(+-spread): the per-channel range imbalance CLE removes.
            bn.weight.data = torch.logspace(-spread, spread, c)[torch.randperm(c, generator=g)]
            bn.bias.data = 0.3 * torch.randn(c, generator=g)
            bn.running_mean = 0.1 * torch.randn(c, generator=g)
            bn.running_var = torch.rand(c, generator=g) + 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.dw(x)))
        x = self.pool(self.act3(self.bn3(self.conv3(x))))
        return self.fc(torch.flatten(x, 1))


def _images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth 8x8 "images": neighbouring pixels correlate as in real ones.

    (On white noise the rounding that minimises a layer's output error is round-to-nearest,
    so AdaRound needs correlated inputs to have anything to improve.)
    """
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 3, 3, 3, generator=g), size=(8, 8), mode="bilinear", align_corners=True)
    return x + 0.5 * torch.randn(n, 1, 1, 1, generator=g) + 0.1 * torch.randn(n, 3, 8, 8, generator=g)


def _log_spread(w: torch.Tensor) -> float:
    """Std of the log per-output-channel weight ranges."""
    return float(w.detach().abs().reshape(w.shape[0], -1).amax(dim=1).log().std())


# ----------------------------------------------------------------------------- CLE


def test_cle_preserves_float_outputs_and_balances_ranges() -> None:
    model = Tiny(spread=1.5).eval()
    folded = fold_batchnorm(model)
    gm = cross_layer_equalize(model)
    x = _images(16)
    ref = model(x)
    assert (gm(x) - ref).abs().max() <= 1e-4 * ref.abs().max()
    pairs = [(p.first, p.second, p.flattened) for p in equalization_pairs(folded)]
    assert pairs == [("conv1", "dw", False), ("dw", "conv3", False), ("conv3", "fc", True)]
    for name in ("conv1", "dw"):
        assert _log_spread(gm.get_submodule(name).weight) < 0.6 * _log_spread(
            folded.get_submodule(name).weight
        )
    # After convergence each channel's range is shared by both layers of a pair.
    r1 = gm.conv1.weight.abs().reshape(8, -1).amax(dim=1)
    r2 = gm.dw.weight.abs().reshape(8, -1).amax(dim=1)
    torch.testing.assert_close(r1, r2, rtol=1e-2, atol=0.0)
    assert model.conv1.weight.grad is None and torch.equal(
        folded.conv1.weight, fold_batchnorm(model).conv1.weight
    )


def test_cle_lowers_per_tensor_low_bit_error() -> None:
    model = Tiny(spread=1.5).eval()
    x = _images(32)
    ref = model(x)
    plan = parse_scheme("w6", per_channel=False)
    err_plain = (prepare(model, plan)(x) - ref).pow(2).mean()
    err_cle = (prepare(cross_layer_equalize(model), plan)(x) - ref).pow(2).mean()
    assert err_cle < 0.5 * err_plain


def test_cle_stops_at_residual_adds_and_relu6() -> None:
    gm = fold_batchnorm(build_model("resnet20").eval())
    pairs = equalization_pairs(gm)
    assert len(pairs) == 9
    assert all(p.first.endswith("conv1") and p.second.endswith("conv2") for p in pairs)
    x = torch.randn(2, 3, 32, 32)
    before = gm(x)
    torch.testing.assert_close(equalize_folded(gm)(x), before, rtol=1e-4, atol=1e-4)

    m6 = Tiny(relu6=True, spread=1.0).eval()
    assert [(p.first, p.second) for p in equalization_pairs(fold_batchnorm(m6))] == [("conv3", "fc")]
    relu = cross_layer_equalize(m6, relu6="relu")
    assert not any(isinstance(m, nn.ReLU6) for m in relu.modules())
    exact = cross_layer_equalize(m6, relu6="stop")
    torch.testing.assert_close(exact(_images(4)), m6(_images(4)), rtol=1e-4, atol=1e-5)
    with pytest.raises(QuantbenchError, match="relu6"):
        cross_layer_equalize(m6, relu6="clip")


# ----------------------------------------------------------------------------- bias correction


def _channel_mean_error(qm, ref, name: str, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """|E[y_q] - E[y_f]| per output channel of layer ``name`` on images ``x`` (after ReLU if ``relu``)."""
    outs = {}
    hooks = [
        qm.layer(name).register_forward_hook(lambda m, a, o: outs.__setitem__("q", o)),
        ref.get_submodule(name).register_forward_hook(lambda m, a, o: outs.__setitem__("f", o)),
    ]
    with torch.no_grad():
        qm(x)
        ref(x)
    for h in hooks:
        h.remove()
    q, f = (torch.relu(outs["q"]), torch.relu(outs["f"])) if relu else (outs["q"], outs["f"])
    dims = [d for d in range(q.dim()) if d != 1]
    return (q.mean(dim=dims) - f.mean(dim=dims)).abs()


@pytest.mark.parametrize(("scheme", "relu_aware"), [("w3", True), ("w4a8", True), ("w3", False)])
def test_bias_correction_removes_mean_output_shift(scheme: str, relu_aware: bool) -> None:
    model = Tiny(spread=0.5).eval()
    ref = fold_batchnorm(model)
    calib, held_out = _images(128, seed=1), _images(128, seed=2)
    qm = calibrate(prepare(model, parse_scheme(scheme, per_channel=False)), calib)
    # dw and conv3 feed a ReLU: the relu-aware variant matches the means after it.
    post = {"dw": relu_aware, "conv3": relu_aware, "fc": False}
    before = {n: _channel_mean_error(qm, ref, n, held_out, post[n]) for n in post}
    bias_correction(qm, model, calib, n_images=None, relu_aware=relu_aware)
    for name in post:
        on_calib = _channel_mean_error(qm, ref, name, calib, post[name])
        assert on_calib.max() < 1e-4 + 1e-3 * before[name].max()
        after = _channel_mean_error(qm, ref, name, held_out, post[name])
        assert after.mean() < before[name].mean()


def test_bias_correction_creates_missing_bias() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3, bias=False)
    )
    qm = calibrate(prepare(model, parse_scheme("w3a8")), _images(32))
    assert qm.layer("0").bias is None
    bias_correction(qm, model, _images(32))
    assert qm.layer("0").bias is not None and qm.layer("3").bias is not None
    assert qm.layer("0").bias.abs().max() > 0


def test_rescue_rejects_a_different_float_model() -> None:
    model = Tiny(spread=1.5).eval()
    qm = calibrate(prepare(model, parse_scheme("w4a8")), _images(16))
    with pytest.raises(QuantbenchError, match="prepare"):
        bias_correction(qm, cross_layer_equalize(model), _images(16))
    with pytest.raises(QuantbenchError, match="prepare"):
        adaround(qm, Tiny(spread=0.2).eval(), _images(16), iters=2)


# ----------------------------------------------------------------------------- AdaRound


def test_rectified_sigmoid_reaches_0_and_1() -> None:
    h = rectified_sigmoid(torch.tensor([-10.0, 0.0, 10.0]))
    assert h.tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize(
    ("scheme", "per_channel", "observer"),
    [("w3", True, "minmax"), ("w4a8", False, "minmax"), ("w2a8", True, "mse")],
)
def test_adaround_weights_on_grid_and_floor_or_ceil(scheme: str, per_channel: bool, observer: str) -> None:
    model = Tiny(spread=0.5).eval()
    calib = _images(64)
    plan = parse_scheme(scheme, per_channel=per_channel, weight_observer=observer)
    qm = calibrate(prepare(model, plan), calib)
    w0 = {name: qm.layer(name).weight.detach().clone() for name, _ in qm.weight_quantizers()}
    adaround(qm, model, calib, iters=60, batch_size=16)
    changed = 0
    for name, fq in qm.weight_quantizers():
        w = qm.layer(name).weight.detach()
        scale, zp = fq.qparams()
        assert torch.equal(fake_quantize(w, scale, zp, fq.spec), w)
        assert torch.equal(fq(w), w)
        s = broadcast_param(scale, w, fq.spec)
        codes = torch.round(w / s)
        lo = torch.clamp(torch.floor(w0[name] / s), fq.spec.qmin, fq.spec.qmax)
        hi = torch.clamp(torch.floor(w0[name] / s) + 1, fq.spec.qmin, fq.spec.qmax)
        assert ((codes == lo) | (codes == hi)).all()
        nearest = torch.round(fq(w0[name]) / s)
        changed += int((codes != nearest).sum())
    assert changed > 0  # AdaRound did choose something other than round-to-nearest


@pytest.mark.parametrize("bits", [3, 4])
def test_adaround_lowers_layer_output_error(bits: int) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    calib = _images(64, seed=3)
    plan = parse_scheme(f"w{bits}")
    nearest = calibrate(prepare(model, plan), calib)
    rounded = calibrate(prepare(model, plan), calib)
    adaround(rounded, model, calib, iters=300, batch_size=16)
    with torch.no_grad():
        ref = model[0](calib)
        err_nearest = (nearest.layer("0")(calib) - ref).pow(2).mean()
        err_ada = (rounded.layer("0")(calib) - ref).pow(2).mean()
        out_ref = model(calib)
        end_nearest = (nearest(calib) - out_ref).pow(2).mean()
        end_ada = (rounded(calib) - out_ref).pow(2).mean()
    assert err_ada < 0.7 * err_nearest
    assert end_ada < 0.7 * end_nearest
    assert rounded.layer("0").weight_fq.scale.equal(nearest.layer("0").weight_fq.scale)


def test_adaround_rejects_companded_weights_and_bad_arguments() -> None:
    model = Tiny().eval()
    qm = prepare(model, parse_scheme("w4", companding="mulaw"))
    with pytest.raises(QuantbenchError, match="companding"):
        adaround(qm, model, _images(8), iters=2)
    with pytest.raises(QuantbenchError, match="iters"):
        adaround(prepare(model, parse_scheme("w4")), model, _images(8), iters=0)


def test_adaround_unit_caches_give_the_whole_network_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """AdaRound advances cached values unit by unit; running the whole network up to every layer
    (the fallback for graphs that cannot be cut) must choose the same rounding."""
    import quantbench.quant.brecq_blocks as blocks

    model = build_model("resnet20").eval()
    calib = _images(16)  # 8x8: the CIFAR ResNet's adaptive pooling takes it
    plan = parse_scheme("w4a8")
    by_units = calibrate(prepare(model, plan), calib)
    adaround(by_units, model, calib, iters=3, batch_size=8)

    def cannot_cut(*_a: object, **_k: object) -> None:
        raise QuantbenchError("cannot cut")

    monkeypatch.setattr(blocks, "find_blocks", cannot_cut)
    whole = calibrate(prepare(model, plan), calib)
    adaround(whole, model, calib, iters=3, batch_size=8)
    for name, _ in by_units.weight_quantizers():
        assert torch.allclose(by_units.layer(name).weight, whole.layer(name).weight, atol=1e-6), name
