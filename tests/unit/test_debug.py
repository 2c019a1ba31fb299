"""The per-layer quantization debugger (quant/debug.py, the ``debug`` kind) and the sensitivity table's
same-images FP32 column.

The property that matters is measured, not built in: the layer the debugger ranks worst on its
images, left in float on OTHER images (by this file's own code, not the debugger's), recovers more
top-1 than a seeded random other layer.
"""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch
from torch import nn

from quantbench.config import TrainConfig
from quantbench.data import open_dataset, split_dataset
from quantbench.errors import QuantbenchError
from quantbench.experiments.layer import config_for, run_experiment
from quantbench.experiments.ptq import sensitivity_rows
from quantbench.experiments.records import RowKey
from quantbench.models import build_model
from quantbench.quant.debug import check_reference, debug_quantized, float_reference, lint_by_layer
from quantbench.quant.fold import fold_batchnorm
from quantbench.quant.lint import Finding
from quantbench.quant.ptq import parse_method, quantize_ptq
from quantbench.quant.sensitivity import layer_sensitivity
from quantbench.train import fit


@pytest.fixture(scope="module")
def trained():
    """lenet trained 3 epochs on digits; 128 calibration images (training split), 256 debug images and
    the other test images held out for the independent measurement."""
    torch.manual_seed(0)
    parts = split_dataset(open_dataset("digits"), {"train": 0.6, "test": 0.4}, seed=0)
    model = build_model("lenet", num_classes=10, in_channels=1)
    fit(model, parts["train"], None, TrainConfig(epochs=3, seed=0))
    model.eval()
    x, y = parts["test"].tensors()
    xt, _ = parts["train"].tensors()
    return model, xt[:128], (x[:256], y[:256]), (x[256:], y[256:])


def _top1(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * float((net(x).argmax(1) == y).float().mean())


def _top1_layer_in_float(qm, model, layer: str, x, y) -> float:
    """This test's own way to leave ``layer`` in float: a copy with its float weights and its quantizers off."""
    q = copy.deepcopy(qm)
    flt = fold_batchnorm(model).get_submodule(layer)
    mod = q.layer(layer)
    mod.weight_fq.mode = "off"
    with torch.no_grad():
        mod.weight.copy_(flt.weight)
        if mod.bias is not None:
            mod.bias.copy_(flt.bias)
    info = next(i for i in q.layers if i.name == layer)
    if info.input_quantizer:
        q.net.get_submodule(info.input_quantizer).mode = "off"
    return _top1(q, x, y)


def _worst_beats_random_other(qm, model, rep, heldout, seed: int) -> tuple[float, float, float]:
    worst = rep.layers[0].layer
    other = random.Random(seed).choice([r.layer for r in rep.layers[1:] if r.quantized])
    x, y = heldout
    return _top1(qm, x, y), _top1_layer_in_float(qm, model, worst, x, y), _top1_layer_in_float(qm, model, other, x, y)


def test_worst_layer_at_w2a4_recovers_more_on_held_out_images_than_a_random_other(trained):
    model, calib, images, heldout = trained
    qm = quantize_ptq(model, parse_method("w2a4:mse", calib_size=128), calib)
    rep = debug_quantized(qm, float_reference(model), images)
    assert rep.n_images == 256 and rep.quant_top1 < rep.fp32_top1 - 10  # aggressive enough to lose something
    assert [r.rank for r in rep.layers] == [1, 2, 3, 4]
    assert rep.layers[0].recovery_points == max(r.recovery_points for r in rep.layers) > 0
    quant, worst, other = _worst_beats_random_other(qm, model, rep, heldout, seed=0)
    assert worst - quant > other - quant, (worst, other, quant)
    assert worst - quant > 5  # the ranking carries over to images it never saw
    assert all(fq.mode == "quant" for _, fq in [*qm.act_quantizers(), *qm.weight_quantizers()])  # restored


def test_a_damaged_activation_range_is_named_worst_with_its_clipping(trained):
    model, calib, images, heldout = trained
    qm = quantize_ptq(model, parse_method("w8a8:minmax", calib_size=128), calib)
    damaged = random.Random(1).choice([i for i in qm.layers if i.input_quantizer])
    fq = qm.net.get_submodule(damaged.input_quantizer)
    fq.scale = fq.scale / 16  # a range 16x too narrow: most of the layer's input is clipped
    rep = debug_quantized(qm, float_reference(model), images)
    top = rep.layers[0]
    assert top.layer == damaged.name
    assert top.act_clip_fraction == max(r.act_clip_fraction for r in rep.layers) > 0.2
    assert all(r.act_clip_fraction < 0.01 for r in rep.layers[1:])  # minmax ranges elsewhere: next to nothing
    quant, worst, other = _worst_beats_random_other(qm, model, rep, heldout, seed=2)
    assert worst > other and worst > quant + 5, (worst, other, quant)


def test_single_layer_errors_match_a_direct_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.randn(96, 1, 8, 8)
    y = net(x).argmax(1)
    qm = quantize_ptq(net, parse_method("w4a4:minmax", calib_size=96), x)
    rep = debug_quantized(qm, float_reference(net), (x, y), batch_size=40)  # 3 uneven batches
    (row,) = rep.layers
    with torch.no_grad():
        ref, out = net(x).double(), qm(x).double()
    sqnr = 10 * math.log10(float((ref**2).sum() / ((ref - out) ** 2).sum()))
    cos = float(nn.functional.cosine_similarity(ref, out, dim=1).mean())
    for st in (row.cumulative, row.isolated):  # one layer: the accumulated error is its own
        assert st.sqnr_db == pytest.approx(sqnr, abs=1e-4)
        assert st.cosine == pytest.approx(cos, abs=1e-6)
        assert st.max_abs_err == pytest.approx(float((ref - out).abs().max()), rel=1e-5)
    assert row.act_clip_fraction == 0.0  # minmax ranges cover the images they were calibrated on
    assert rep.fp32_top1 == 100.0 and rep.quant_top1 == pytest.approx(_top1(qm, x, y))
    wider = debug_quantized(qm, float_reference(net), (3 * x, y))
    assert wider.layers[0].act_clip_fraction > 0.1


def test_unquantized_layer_has_infinite_sqnr_as_null_and_json_safe_record(trained):
    model, calib, images, _ = trained
    qm = quantize_ptq(model, parse_method("w8a8:minmax-flfp32", calib_size=128), calib)
    rep = debug_quantized(qm, float_reference(model), images)
    first = next(r for r in rep.layers if r.layer == "block1.0")  # first layer kept float: identical output
    assert not first.quantized and first.recovery_points == 0.0
    assert first.cumulative.sqnr_db is None and first.isolated.sqnr_db is None
    assert first.cumulative.cosine == 1.0 and first.cumulative.max_abs_err == 0.0
    assert first.act_clip_fraction is None and first.weight_clip_fraction is None
    text = json.dumps(rep.as_dict(), allow_nan=False)
    back = {x["layer"]: x for x in json.loads(text)["layers"]}
    assert back["block1.0"]["cumulative"]["sqnr_db"] is None
    assert all(x.rank < first.rank for x in rep.layers if x.recovery_points > 0)  # nothing to recover: after those


def test_debug_kind_rows_and_record_without_store():
    cfg = config_for("debug", {"method": "w4a4:minmax-flfp32", "calib_size": 64, "debug_images": 48,
                               "no_store": True})
    out = run_experiment(cfg, progress=False, log=lambda m: None)
    rec = out.record
    assert rec["method"] == "w4a4:minmax-flfp32" and rec["n_images"] == 48
    assert rec["worst"] == rec["layers"][0]["layer"]
    json.dumps(rec, allow_nan=False)
    metrics = {r.metric for r in out.results}
    assert metrics >= {"layer_sqnr_db", "layer_cosine", "layer_max_abs_err", "layer_clip_fraction",
                       "layer_recovery_points", "debug_top1"}
    sq = [r for r in out.results if r.metric == "layer_sqnr_db" and r.extra["layer"] == "block1.0"]
    assert {r.extra["mode"] for r in sq} == {"cumulative", "isolated"} and all(r.value is None for r in sq)
    assert all({"layer", "index", "mode", "lint"} <= set(r.extra) for r in out.results if r.metric.startswith("layer_"))


def test_lint_findings_attach_to_the_layer_they_name():
    net = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.SiLU(), nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(16 * 8 * 8, 10)).eval()
    from quantbench.quant.lint import lint_model

    findings = lint_model(net, (1, 8, 8))
    by = lint_by_layer(findings, ["0", "2", "5"])
    assert {f["rule"] for f in by["0"]} == {"channels-multiple-of-8", "unfused-activation"}
    assert by["2"] == [] and by["5"] == []
    f = Finding("unfused-activation", "warning", "act", "SiLU", "SiLU after conv1 is not fused", "fix")
    assert lint_by_layer([f], ["conv1", "conv10", "conv1.0"]) == {
        "conv1": [{"rule": "unfused-activation", "severity": "warning", "message": f.message}],
        "conv10": [], "conv1.0": []}
    x = torch.randn(64, 1, 8, 8)
    rep = debug_quantized(quantize_ptq(net, parse_method("w8a8"), x), float_reference(net), (x, net(x).argmax(1)),
                          findings=findings)
    assert {f["rule"] for r in rep.layers if r.layer == "0" for f in r.lint} == {"channels-multiple-of-8",
                                                                                  "unfused-activation"}


@pytest.mark.parametrize("values, needle", [
    ({"debug_images": 0}, "debug_images"),
    ({"method": "w8a8:magic"}, "unknown algorithm in 'magic'"),
    ({"method": "w9q2"}, "w9q2"),
])
def test_bad_config_is_refused_in_one_line(values, needle):
    with pytest.raises(QuantbenchError, match=needle) as exc:
        config_for("debug", values)
    assert "\n" not in str(exc.value)


def test_a_float_model_it_was_not_made_from_is_refused(trained):
    model, calib, images, _ = trained
    qm = quantize_ptq(model, parse_method("w8a8", calib_size=128), calib)
    untrained = build_model("lenet", num_classes=10, in_channels=1).eval()
    with pytest.raises(QuantbenchError, match="not quantized from this float model") as exc:
        debug_quantized(qm, float_reference(untrained), images)
    assert "\n" not in str(exc.value)
    with pytest.raises(QuantbenchError, match="has layer 'block1.0', the float model has none"):
        check_reference(qm, nn.Sequential())
    with pytest.raises(QuantbenchError, match="n_images 0"):
        debug_quantized(qm, float_reference(model), images, n_images=0)


def test_sensitivity_rows_carry_fp32_top1_on_the_same_images(trained):
    model, calib, images, _ = trained
    qm = quantize_ptq(model, parse_method("w2a4:mse", calib_size=128), calib)
    n = 100
    sens = layer_sensitivity(qm, images, n_images=n)
    x, y = images
    qm.set_mode("off")
    expected = _top1(qm, x[:n], y[:n])
    qm.set_mode("quant")
    assert {s.fp32_top1 for s in sens} == {expected} and {s.n_images for s in sens} == {n}
    rows = [r.as_dict() for r in sensitivity_rows(RowKey("lenet", "digits", "w2a4:mse"), sens)]
    assert all(r["extra"]["fp32_top1_same_images"] == expected and r["extra"]["n_images"] == n for r in rows)
    from quantbench.report.tables import sensitivity_table

    header, body = sensitivity_table(rows)
    assert header[-1] == f"FP32 top-1 % on the same {n} images"
    assert [b[-1] for b in body] == [f"{expected:.2f}"] * len(sens)


def test_api_debugs_an_in_memory_quantized_model_and_refuses_one_of_another_model():
    import quantbench as qb

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    x = torch.randn(200, 1, 8, 8)
    y = net(x).argmax(1)
    qm = qb.quantize(net, "w4a4:minmax", x[:64], calib_size=64)
    rec = qb.debug(net, (x, y), quantized=qm, calib_size=32, debug_images=100)
    assert rec["quantized_from"] == "the quantized model passed in" and rec["n_images"] == 100
    assert rec["fp32_top1"] == 100.0 and rec["worst"] in ("0", "3")
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[0].weight.mul_(-1)
    with pytest.raises(QuantbenchError, match="the quantized model passed in: was not quantized from this float"):
        qb.debug(other, (x, y), quantized=qm, calib_size=32)
