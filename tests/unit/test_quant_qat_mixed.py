"""QAT (learnable step sizes from a PTQ start) and mixed precision (sensitivity, knapsack, budgets)."""

from __future__ import annotations

import copy
import itertools
import math
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from quantbench.config import TrainConfig
from quantbench.errors import QuantbenchError
from quantbench.experiments.qat import search_mixed
from quantbench.quant.fake import FakeQuant, fake_quantize, pact_fake_quantize
from quantbench.quant.mixed import LayerBits, bit_sensitivity, mixed_plan, solve_bits, weight_bytes
from quantbench.quant.prepare import prepare
from quantbench.quant.ptq import PTQConfig, quantize_ptq
from quantbench.quant.qat import QATConfig, make_trainable, quantize_qat
from quantbench.quant.save import load_quantized, save_quantized
from quantbench.quant.spec import LayerSpec, QuantPlan, QuantSpec, parse_scheme

U4 = QuantSpec(bits=4, signed=False, symmetric=False)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)).eval()


def _data(n: int = 192) -> tuple[torch.Tensor, torch.Tensor]:
    """Three separable classes: bright top, bright bottom, dark."""
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 3
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    x[y == 0, :, :4] += 1.5
    x[y == 1, :, 4:] += 1.5
    return x, y


@pytest.fixture(scope="module")
def trained():
    from quantbench.train import fit

    model = _net()
    fit(model, _data(), None, TrainConfig(epochs=15, lr=0.05, batch_size=32))
    return model.eval()


# ----------------------------------------------------------------------------- fake quantization


def test_pact_values_equal_fake_quant_and_only_clipped_elements_move_the_bound():
    x = torch.tensor([0.1, 0.5, 0.9, 2.0, 3.0], requires_grad=True)
    scale = torch.tensor(0.1, requires_grad=True)  # alpha = 15 * 0.1 = 1.5
    y = pact_fake_quantize(x, scale, torch.tensor(0), U4)
    assert torch.allclose(y, fake_quantize(x.detach(), torch.tensor(0.1), torch.tensor(0), U4))
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert math.isclose(float(scale.grad), 2 * 15.0)  # d y / d alpha = 1 for each of the two clipped


def test_make_learnable_requires_calibration_and_turns_scale_into_a_parameter():
    fq = FakeQuant(U4)
    with pytest.raises(QuantbenchError, match="calibrate before"):
        fq.make_learnable()
    fq(torch.rand(4, 5))
    fq.freeze().make_learnable("pact")
    assert isinstance(fq.scale, nn.Parameter) and fq.grad == "pact"
    with pytest.raises(QuantbenchError, match="lsq or pact"):
        fq.make_learnable("magic")
    pc = FakeQuant(QuantSpec(bits=4, per_channel=True, axis=0), role="weight")
    pc.observer.update(torch.randn(3, 4))
    pc.freeze()
    with pytest.raises(QuantbenchError, match="PACT learns one clipping bound per tensor"):
        pc.make_learnable("pact")
    dyn = prepare(_net(), parse_scheme("dynamic"))
    with pytest.raises(QuantbenchError, match="cannot be trained"):
        make_trainable(dyn)


# ----------------------------------------------------------------------------- QAT


@pytest.mark.parametrize("act_grad", ["lsq", "pact"])
def test_qat_recovers_what_w2a2_ptq_lost(trained, act_grad):
    x, y = _data(300)
    cfg = QATConfig(scheme="w2a2", act_grad=act_grad, calib_size=64,
                    train=TrainConfig(epochs=6, lr=3e-3, optimizer="adamw", batch_size=32, weight_decay=0.0))
    qm, hist, start = quantize_qat(trained, cfg, (x[:64], y[:64]), (x, y))

    def acc(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    assert len(hist.epochs) == 6 and hist.wall_s > 0
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]
    assert acc(qm) >= acc(start)
    learned = [float(fq.scale.detach().abs().mean()) for _, fq in qm.act_quantizers()]
    initial = [float(fq.scale.detach().abs().mean()) for _, fq in start.act_quantizers()]
    assert learned != initial  # step sizes were trained
    with tempfile.TemporaryDirectory() as tmp:  # a QAT model saves and reloads like a PTQ one
        save_quantized(qm, Path(tmp) / "m.qbm")
        back = load_quantized(Path(tmp) / "m.qbm", _net())
        with torch.no_grad():
            assert torch.equal(back(x), qm(x))


def test_bn_freeze_schedule_updates_statistics_then_folds_exactly(trained):
    from quantbench.quant.prepare import QConv2d
    from quantbench.quant.qat import QConvBn2d, fold_bn_for_good, freeze_bn, unfold_bn

    x, y = _data(96)
    start = quantize_ptq(trained, PTQConfig("w4a8", "mse", calib_size=64), (x, y))
    qm = make_trainable(copy.deepcopy(start))
    assert unfold_bn(qm) == 1  # only the first conv had a BatchNorm
    layer = qm.layer("0")
    assert isinstance(layer, QConvBn2d)
    with torch.no_grad():
        assert torch.allclose(qm(x), start(x), atol=1e-5)  # unfolding changes nothing in eval mode
        before = layer.bn.running_mean.clone()
        qm.train()
        qm(x * 2.0 + 0.5)  # new input statistics: the running ones follow while not frozen
        assert not torch.allclose(layer.bn.running_mean, before)
        freeze_bn(qm)
        frozen = layer.bn.running_mean.clone()
        qm(x)
        assert torch.equal(layer.bn.running_mean, frozen)
        qm.eval()
        ref = qm(x)
    assert fold_bn_for_good(qm) == 1 and type(qm.layer("0")) is QConv2d
    with torch.no_grad():
        assert torch.allclose(qm(x), ref, atol=1e-5)


def test_qat_with_bn_schedule_trains_and_ends_folded(trained):
    from quantbench.quant.prepare import QConv2d

    x, y = _data(120)
    cfg = QATConfig(scheme="w4a4", bn_freeze_epoch=1, calib_size=64,
                    train=TrainConfig(epochs=2, lr=1e-3, optimizer="adamw", batch_size=32, weight_decay=0.0))
    qm, hist, _ = quantize_qat(trained, cfg, (x[:64], y[:64]), (x, y))
    assert len(hist.epochs) == 2
    assert type(qm.layer("0")) is QConv2d and not qm.training  # folded for good after training


def test_qat_config_labels():
    assert QATConfig(scheme="w4a4").label() == "w4a4:qat"
    assert QATConfig(scheme="w4a4", act_grad="pact", first_last="int8").label() == "w4a4:qat-pact-flint8"


# ----------------------------------------------------------------------------- mixed precision


def _brute(sens, cap_bytes):
    best = None
    for combo in itertools.product(*[sorted(s.damage) for s in sens]):
        size = sum(weight_bytes(s.numel, b) for s, b in zip(sens, combo, strict=True))
        if size > cap_bytes:
            continue
        dmg = sum(s.damage[b] for s, b in zip(sens, combo, strict=True))
        if best is None or dmg < best[0] - 1e-12:
            best = (dmg, combo)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_knapsack_matches_brute_force_and_never_exceeds_the_budget(seed):
    g = torch.Generator().manual_seed(seed)
    sens = []
    for i in range(5):
        numel = int(torch.randint(50, 5000, (1,), generator=g))
        base = float(torch.rand(1, generator=g)) + 0.01
        sens.append(LayerBits(f"l{i}", "Conv2d", numel, {b: base * 4.0 ** (-b) * (1 + i) for b in (2, 4, 8)}))
    lo = sum(weight_bytes(s.numel, 2) for s in sens)
    hi = sum(weight_bytes(s.numel, 8) for s in sens)
    cap = int(lo + (hi - lo) * float(torch.rand(1, generator=g)))
    choice = solve_bits(sens, budget_bytes=cap, resolution=100_000)
    assert choice.weight_bytes <= cap
    ref = _brute(sens, cap)
    assert choice.predicted_damage == pytest.approx(ref[0], rel=1e-9)


def test_average_bits_budget_and_impossible_budgets():
    sens = [LayerBits("a", "Conv2d", 100, {2: 9.0, 4: 1.0, 8: 0.0}), LayerBits("b", "Linear", 300, {2: 1.0, 4: 0.5, 8: 0.0})]
    choice = solve_bits(sens, average_bits=4.0)
    assert choice.average_bits <= 4.0 and choice.bits == {"a": 8, "b": 2}  # 8*100+2*300 = 1400 <= 1600
    with pytest.raises(QuantbenchError, match="below the smallest possible model"):
        solve_bits(sens, budget_bytes=10)
    with pytest.raises(QuantbenchError, match="exactly one budget"):
        solve_bits(sens)


def test_sensitivity_falls_with_more_bits_and_the_plan_sets_them(trained):
    x, y = _data(64)
    sens = bit_sensitivity(trained, (x, y), bits=(2, 4, 8), n_images=64)
    assert [s.layer for s in sens] == ["0", "3", "7"]
    for s in sens:
        assert s.damage[2] > s.damage[4] > s.damage[8] >= 0
    hess = bit_sensitivity(trained, (x, y), bits=(2, 8), metric="hessian", n_images=64, hutchinson_samples=4)
    # a layer whose trace estimate is not positive gets no damage at any width; the rest rank by bits
    assert all(s.damage[2] >= s.damage[8] >= 0 for s in hess) and any(s.damage[2] > s.damage[8] for s in hess)
    choice = solve_bits(sens, average_bits=5.0)
    plan = mixed_plan(choice, act_bits=8)
    qm = prepare(trained, plan)
    assert {i.name: i.spec.weight.bits for i in qm.layers} == choice.bits
    assert all(i.spec.act.bits == 8 for i in qm.layers)
    with pytest.raises(QuantbenchError, match="candidate bits must be integers in 2..8"):
        bit_sensitivity(trained, (x, y), bits=(1, 4))


def test_search_mixed_fits_the_real_file_budget(trained):
    x, y = _data(64)
    uniform = quantize_ptq(trained, PTQConfig("w4a8", "mse", calib_size=64), (x, y))
    with tempfile.TemporaryDirectory() as tmp:
        budget = save_quantized(uniform, Path(tmp) / "u.qbm")
        search = search_mixed(trained, (x, y), budget_bytes=budget, bits=(2, 4, 8), n_images=64)
        qm = quantize_ptq(trained, PTQConfig("w8a8", "mse", calib_size=64), (x, y), plan=search.plan)
        size = save_quantized(qm, Path(tmp) / "m.qbm")
    assert size == search.predicted_file_bytes <= budget
    with pytest.raises(QuantbenchError, match="not reachable"):
        search_mixed(trained, (x, y), budget_bytes=300, bits=(2, 4), n_images=64)


def test_plan_overrides_are_stored_as_differences_and_old_full_form_still_loads():
    plan = parse_scheme("w8a8")
    w4 = plan.default.weight.replace(bits=4)
    mixed = plan.replace(overrides={"conv": LayerSpec(w4, plan.default.act), "fc": LayerSpec(None, None)})
    d = mixed.as_dict()
    assert d["overrides"]["conv"] == {"weight": {"bits": 4}}
    assert d["overrides"]["fc"] == {"weight": None, "act": None}
    assert QuantPlan.from_dict(d) == mixed
    full = {**d, "overrides": {"conv": LayerSpec(w4, plan.default.act).as_dict()}}
    assert QuantPlan.from_dict(full).overrides["conv"] == LayerSpec(w4, plan.default.act)
