"""``QuantPlan.joins``: the inputs of residual adds, concatenations, products and pooling take at least 8
bits when activations have fewer (``-jsame``: the activations' bits, the placement before the option).

Engine parity of a W4A4 model whose join inputs are 8-bit (one value quantized twice: at 4 bits for a
convolution, at 8 for the add) is in tests/contracts/test_engines.py; here: the plan, where prepare puts
the quantizers, the label, stored plans and configs from before the option, the file.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.prepare import calibrate, prepare
from quantbench.quant.ptq import PTQConfig, parse_method, quantize_ptq
from quantbench.quant.save import load_quantized, save_quantized
from quantbench.quant.spec import QuantPlan, parse_scheme


class _Joins(nn.Module):
    """A residual add, a concatenation, a gating product and an average pool, each after convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)
        self.gate = nn.Conv2d(12, 12, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.relu(self.a(x) + x)
        z = torch.cat([y, torch.relu(self.b(y))], 1)
        z = z * torch.sigmoid(self.gate(z))
        return self.fc(torch.flatten(self.pool(z), 1))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return _Joins().eval()


def _site_bits(qm) -> dict[str, set[int]]:
    """Consumer label -> the bits of the quantizers on its inputs."""
    out: dict[str, set[int]] = {}
    for name, fq in qm.act_quantizers():
        for consumer in qm.act_sites[name]["consumers"]:
            out.setdefault(consumer, set()).add(fq.spec.bits)
    return out


def test_plan_joins_take_eight_bits_below_eight_bit_activations() -> None:
    plan = parse_scheme("w4a4")
    assert plan.joins == "int8" and plan.join_act.bits == 8 and plan.default.act.bits == 4
    assert plan.join_act == plan.default.act.replace(bits=8)  # signedness, observer... kept
    same = parse_scheme("w4a4", joins="same")
    assert same.join_act == same.default.act
    for scheme in ("w8a8", "w4a8", "w8a16", "dynamic", "w4"):  # nothing to change: one spelling, "same"
        p = parse_scheme(scheme)
        assert p.joins == "same" and p.join_act == p.default.act and not p.has_low_bit_joins
    assert QuantPlan(default=parse_scheme("w2a4").default).joins == "same"  # a plan built by hand: as before
    with pytest.raises(QuantbenchError, match=r"^quant plan: joins 'wide' unknown; expected one of: same, int8$"):
        parse_scheme("w4a4", joins="wide")


def test_prepare_quantizes_join_inputs_at_eight_bits_and_layer_inputs_at_the_scheme_bits() -> None:
    model = _net()
    bits = _site_bits(prepare(model, parse_scheme("w4a4")))
    assert bits["a"] == bits["b"] == bits["gate"] == bits["fc"] == {4}  # what the low-bit kernels read
    joins = {k: v for k, v in bits.items() if k not in ("stem", "a", "b", "gate", "fc")}
    assert len(joins) == 4 and all(v == {8} for v in joins.values()), joins  # add, cat, mul, pool
    # the stem's output feeds conv `a` (4 bits) and the add (8 bits): one value, two quantizers
    qm = prepare(model, parse_scheme("w4a4"))
    on_stem = [n for n, s in qm.act_sites.items() if s["value"] == "relu"]
    assert sorted(dict(qm.act_quantizers())[n].spec.bits for n in on_stem) == [4, 8]
    old = _site_bits(prepare(model, parse_scheme("w4a4", joins="same")))
    assert all(v == {4} for k, v in old.items() if k != "stem") and old["stem"] == {4}


def test_method_tag_round_trip_and_refusals() -> None:
    cfg = parse_method("w4a4:qdrop-flint8-jsame")
    assert cfg.joins == "same" and cfg.label() == "w4a4:qdrop-flint8-jsame" and parse_method(cfg.label()) == cfg
    assert parse_method("w4a4:mse").label() == "w4a4:mse" and parse_method("w4a4:mse").plan().joins == "int8"
    with pytest.raises(QuantbenchError, match=r"^method 'w8a8:mse-jsame': 'jsame' applies to static activations "
                                              r"below 8 bits; w8a8 has none"):
        parse_method("w8a8:mse-jsame")
    with pytest.raises(QuantbenchError, match="'jsame' applies"):
        parse_method("w4:mse-jsame")
    eight = parse_method("w4a4:qdrop-jint8")
    assert eight.joins == "int8" and eight.label() == "w4a4:qdrop-jint8" and parse_method(eight.label()) == eight
    assert parse_method("w4a4:mse").joins == "auto"  # no tag: chosen on the model (quantize_ptq)
    with pytest.raises(QuantbenchError, match=r"^method 'w4a8:mse-jint8': 'jint8' applies to static activations"):
        parse_method("w4a8:mse-jint8")
    with pytest.raises(QuantbenchError, match=r"^PTQ config: joins 'wide' unknown; expected one of: auto, same, int8$"):
        PTQConfig(scheme="w4a4", joins="wide").plan()


def test_stored_plans_and_configs_from_before_the_option_read_as_they_were_made() -> None:
    plan = parse_scheme("w4a4")
    assert plan.as_dict()["joins"] == "int8" and QuantPlan.from_dict(plan.as_dict()) == plan
    old = parse_scheme("w4a4", joins="same").as_dict()
    assert "joins" not in old and QuantPlan.from_dict(old).joins == "same"
    assert "joins" not in parse_scheme("w8a8").as_dict()  # 8-bit plans are stored as they always were
    assert PTQConfig.from_stored({"scheme": "w4a4", "algo": "mse"}).label() == "w4a4:mse-jsame"
    assert PTQConfig.from_stored({"scheme": "w4a4", "algo": "mse", "joins": "int8"}).label() == "w4a4:mse-jint8"
    assert PTQConfig.from_stored({"scheme": "w4a4", "algo": "mse", "joins": "auto"}).label() == "w4a4:mse"
    assert PTQConfig.from_stored({"scheme": "w8a8", "algo": "mse"}).label() == "w8a8:mse"


def test_saved_model_rebuilds_its_join_placement(tmp_path) -> None:
    model, x = _net(), torch.randn(64, 3, 8, 8)
    for method in ("w4a4:mse-jint8", "w4a4:mse-jsame"):
        qm = quantize_ptq(model, parse_method(method, calib_size=64), x)
        path = tmp_path / f"{method.replace(':', '_')}.qbm"
        save_quantized(qm, path)
        back = load_quantized(path, _net())
        assert back.plan.joins == qm.plan.joins
        torch.testing.assert_close(back(x), qm(x), rtol=0, atol=0)
    eight = quantize_ptq(model, parse_method("w4a4:mse-jint8", calib_size=64), x)
    four = quantize_ptq(model, parse_method("w4a4:mse-jsame", calib_size=64), x)
    with torch.no_grad():
        ref = model(x)
        err8, err4 = ((eight(x) - ref) ** 2).mean(), ((four(x) - ref) ** 2).mean()
    assert err8 < err4  # the 4-bit joins are a real extra error, the 8-bit ones a smaller one


def test_auto_keeps_the_placement_closer_to_the_float_model_and_says_why() -> None:
    """``auto`` (no tag) prepares both placements and keeps the one with the lower calibration KL: the same
    model, bit for bit, as asking for that placement by its tag; the note names both KLs."""
    from quantbench.quant.joins import TIE, calibration_kl

    model, x = _net(), torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    explicit = {j: quantize_ptq(model, parse_method(f"w4a4:minmax-j{j}", calib_size=64), x) for j in ("int8", "same")}
    kl = {j: calibration_kl(qm, ref, x) for j, qm in explicit.items()}
    assert kl["int8"] != kl["same"]  # the choice is a real one on this net
    want = "same" if kl["same"] < (1 - TIE) * kl["int8"] else "int8"
    auto = quantize_ptq(model, parse_method("w4a4:minmax", calib_size=64), x)
    assert auto.plan.joins == want
    torch.testing.assert_close(auto(x), explicit[want](x), rtol=0, atol=0)
    note = auto.notes["joins"]
    assert note.startswith(f"{want} (auto: calibration KL {kl[want]:.3g}") and f"{max(kl.values()):.3g}" in note
    assert "joins" not in explicit["int8"].notes  # asked for by tag: nothing chosen, nothing to say
    w8 = quantize_ptq(model, parse_method("w8a8:minmax", calib_size=64), x)
    assert w8.notes == {} and w8.plan.joins == "same"  # 8-bit activations: no choice, no extra calibration
    chain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 5)).eval()
    assert quantize_ptq(chain, parse_method("w4a4:minmax", calib_size=64), x).notes == {}  # no join: nothing to say


def test_auto_chooses_the_four_bit_joins_where_they_match_better() -> None:
    """Both outcomes are reachable: of a few random nets (sharpened heads, so the KL is not ~0), most match
    the float model better with 8-bit join inputs, some with 4-bit ones, and ``auto`` follows the KL."""
    from quantbench.quant.joins import TIE, calibration_kl, choose_joins

    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(100))
    chosen = []
    for seed in range(4):
        torch.manual_seed(seed)
        model = _Joins().eval()
        with torch.no_grad():
            model.fc.weight.mul_(20)
            ref = model(x)
        qm, note = choose_joins(model, parse_scheme("w4a4"), x, n_images=64)
        other = calibrate(prepare(model, parse_scheme("w4a4", joins="int8" if qm.plan.joins == "same" else "same")), x)
        kl = {qm.plan.joins: calibration_kl(qm, ref, x), other.plan.joins: calibration_kl(other, ref, x)}
        assert (kl["same"] < (1 - TIE) * kl["int8"]) == (qm.plan.joins == "same"), kl
        assert note.split(" ")[0] == qm.plan.joins
        chosen.append(qm.plan.joins)
    assert set(chosen) == {"int8", "same"}, chosen
    qm, note = choose_joins(model, parse_scheme("w8a8"), x, n_images=64)  # 8-bit activations: nothing to choose
    assert note == "" and qm.plan == parse_scheme("w8a8") and all(fq.calibrated for _, fq in qm.act_quantizers())


def test_a_run_logs_and_stores_the_choice(tmp_path) -> None:
    """The experiment layer (every verb, sweep cell) says the choice once and keeps it with the run."""
    from quantbench.experiments.layer import config_for, run_experiment
    from quantbench.store import ResultStore

    said: list[str] = []
    cfg = config_for("ptq", {"model": "resnet20", "data": "synthetic:n=96,shape=3x32x32,classes=10,seed=0",
                             "normalize": "none", "method": "w4a4:minmax", "calib_size": 32,
                             "store": str(tmp_path / "q.db"), "out": str(tmp_path / "run")})
    rec = run_experiment(cfg, progress=False, log=said.append).record
    note = rec["choices"]["joins"]
    assert note.split(" ")[0] in ("int8", "same") and "calibration KL" in note
    assert [m for m in said if "joins:" in m] == [f"w4a4:minmax: joins: {note}"]
    with ResultStore(tmp_path / "q.db") as store:
        (row,) = store.query(metric="ptq_time_s")
    assert row["extra"]["joins"] == note and row["method"] == "w4a4:minmax"  # the label stays what was asked
