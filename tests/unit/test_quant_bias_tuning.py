"""Bias tuning (the ``bt`` tag): every bias learned against the float predictions, nothing else moves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.bias_tuning import tune_biases
from quantbench.quant.prepare import calibrate, prepare
from quantbench.quant.ptq import PTQConfig, parse_method, quantize_ptq
from quantbench.quant.spec import parse_scheme


class Tiny(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=bias)
        self.fc = nn.Linear(8, 5, bias=bias)
        for m in (self.c1, self.c2, self.fc):
            m.weight.data = torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5
            if bias:
                m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _images(n: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 3, 3, 3, generator=g), size=(8, 8), mode="bilinear", align_corners=True)
    return x + 0.1 * torch.randn(n, 3, 8, 8, generator=g)


def _calibrated(model: nn.Module, calib: torch.Tensor, scheme: str = "w3a3"):
    qm = calibrate(prepare(model, parse_scheme(scheme)), calib)
    qm.set_mode("quant")
    return qm.eval()


def test_tuning_lowers_the_kl_and_moves_only_the_biases() -> None:
    model, calib = Tiny().eval(), _images()
    qm = _calibrated(model, calib)
    before = {k: v.clone() for k, v in qm.state_dict().items()}
    grads = {n: p.requires_grad for n, p in qm.named_parameters()}
    out = tune_biases(qm, model, calib, iters=150, lr=1e-2)
    assert out["kept"] and out["kl_after"] < 0.9 * out["kl_before"], out
    assert out["biases"] == 3 and out["values"] == 8 + 8 + 5
    after = qm.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(".bias") for k in changed), changed  # weights, steps, zero points: untouched
    assert {n: p.requires_grad for n, p in qm.named_parameters()} == grads
    assert all(p.grad is None for p in qm.parameters())
    # the held-out images agree too: the tuned network is closer to the float one on images it never saw
    test = _images(seed=1)
    with torch.no_grad():
        ref = F.log_softmax(model(test), 1)
        tuned_kl = F.kl_div(F.log_softmax(qm(test), 1), ref, log_target=True, reduction="batchmean")
        qm.load_state_dict(before)
        plain_kl = F.kl_div(F.log_softmax(qm(test), 1), ref, log_target=True, reduction="batchmean")
    assert tuned_kl < plain_kl


def test_a_tuning_that_does_not_help_leaves_the_biases_as_they_were() -> None:
    model, calib = Tiny().eval(), _images()
    qm = _calibrated(model, calib)
    before = {k: v.clone() for k, v in qm.state_dict().items()}
    out = tune_biases(qm, model, calib, iters=20, lr=1e3)  # steps far past any minimum
    assert not out["kept"] and out["kl_after"] >= out["kl_before"]
    assert all(torch.equal(before[k], v) for k, v in qm.state_dict().items())


def test_the_bt_tag_runs_it_last_in_quantize_and_labels_round_trip() -> None:
    model, calib = Tiny().eval(), _images()
    cfg = parse_method("w3a3:mse-bt", calib_size=96)
    assert cfg.algorithm().bias_tuning and cfg.label() == "w3a3:mse-bt"
    assert parse_method("w3a3:mse-nobt").label() == "w3a3:mse"  # mse does not tune by default: nothing to say
    assert not PTQConfig("w4a4", "qdrop").algorithm().bias_tuning
    tuned = quantize_ptq(model, cfg, calib)
    plain = quantize_ptq(model, parse_method("w3a3:mse", calib_size=96), calib)
    assert "bias tuning" in tuned.notes and "bias tuning" not in plain.notes
    diff = {k for k, v in tuned.state_dict().items() if not torch.equal(v, plain.state_dict()[k])}
    assert diff and all(k.endswith(".bias") for k in diff), diff


def test_after_reconstruction_it_keeps_the_learned_activation_steps() -> None:
    model, calib = Tiny().eval(), _images()
    cfg = parse_method("w4a8:qdrop", calib_size=96, adaround_iters=20)  # 8-bit activations: no join choice
    plain = quantize_ptq(model, cfg, calib)
    tuned = quantize_ptq(model, parse_method("w4a8:qdrop-bt", calib_size=96, adaround_iters=20), calib)
    a, b = plain.state_dict(), tuned.state_dict()
    diff = {k for k in a if not torch.equal(a[k], b[k])}
    assert diff and all(k.endswith(".bias") for k in diff), diff  # not re-calibrated: the steps QDrop learned stay


def test_refusals_are_one_line_errors() -> None:
    model, calib = Tiny().eval(), _images()
    qm = _calibrated(model, calib)
    for kwargs in ({"iters": 0}, {"lr": 0.0}, {"batch_size": 0}):
        with pytest.raises(QuantbenchError, match="bias tuning: need") as e:
            tune_biases(qm, model, calib, **kwargs)
        assert "\n" not in str(e.value)
    no_bias = Tiny(bias=False).eval()
    with pytest.raises(QuantbenchError, match="no quantized layer of this model has a bias"):
        tune_biases(_calibrated(no_bias, calib), no_bias, calib)
    with pytest.raises(QuantbenchError, match="unknown option tag 'bty'"):
        parse_method("w4a4:qdrop-bty")
