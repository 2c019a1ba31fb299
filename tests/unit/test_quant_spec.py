"""QuantSpec / LayerSpec / QuantPlan: validation, integer ranges, scheme parsing, JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from quantbench.errors import QuantbenchError
from quantbench.quant.spec import FP32_LAYER, LayerSpec, QuantPlan, QuantSpec, parse_scheme


@pytest.mark.parametrize(
    "kwargs, qmin, qmax",
    [
        ({"bits": 8}, -128, 127),
        ({"bits": 8, "narrow_range": True}, -127, 127),
        ({"bits": 8, "signed": False}, 0, 255),
        ({"bits": 4}, -8, 7),
        ({"bits": 4, "signed": False}, 0, 15),
        ({"bits": 2}, -2, 1),
        ({"bits": 2, "narrow_range": True}, -1, 1),
        ({"bits": 16}, -32768, 32767),
        ({"bits": 16, "signed": False}, 0, 65535),
    ],
)
def test_integer_ranges(kwargs, qmin, qmax):
    spec = QuantSpec(**kwargs)
    assert (spec.qmin, spec.qmax, spec.levels) == (qmin, qmax, qmax - qmin + 1)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"bits": 1}, "bits 1 out of range"),
        ({"bits": 17}, "bits 17 out of range"),
        ({"bits": True}, "bits must be int"),
        ({"bits": "8"}, "bits must be int"),
        ({"signed": 1}, "signed must be bool"),
        ({"percentile": 0.0}, "percentile"),
        ({"percentile": 100.5}, "percentile"),
        ({"companding": "alaw"}, "'alaw'"),
        ({"mu": 0.0}, "mu"),
        ({"mu": float("inf")}, "mu"),
        ({"companding": "mulaw", "symmetric": False}, "symmetric"),
        ({"narrow_range": True, "signed": False}, "narrow_range"),
        ({"observer": "maxmin"}, "minmax"),  # the error lists the known observers
        ({"observer": "entropy", "per_channel": True}, "per-tensor only"),
    ],
)
def test_invalid_specs_are_user_errors_naming_the_value(kwargs, needle):
    with pytest.raises(QuantbenchError) as err:
        QuantSpec(**kwargs)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_spec_is_frozen_and_replace_revalidates():
    spec = QuantSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.bits = 4  # type: ignore[misc]
    assert spec.replace(bits=4).bits == 4 and spec.bits == 8
    with pytest.raises(QuantbenchError):
        spec.replace(bits=0)


@pytest.mark.parametrize(
    "spec, label",
    [
        (QuantSpec(bits=8, per_channel=True), "int8-sym-pc"),
        (QuantSpec(bits=8, signed=False, symmetric=False), "uint8-asym"),
        (QuantSpec(bits=8, signed=False, symmetric=False, dynamic=True), "uint8-asym-dyn"),
        (QuantSpec(bits=4, per_channel=True, companding="mulaw"), "int4-sym-pc-mulaw255"),
        (QuantSpec(bits=4, per_channel=True, axis=1), "int4-sym-pc1"),
        (QuantSpec(bits=8, narrow_range=True), "int8-sym-narrow"),
        (QuantSpec(bits=8, observer="percentile", percentile=99.9), "int8-sym-p99.9"),
        (QuantSpec(bits=8, observer="mse"), "int8-sym-mse"),
    ],
)
def test_short_labels(spec, label):
    assert spec.short() == label


def test_spec_dict_round_trip_and_unknown_key():
    spec = QuantSpec(bits=5, signed=False, symmetric=False, observer="mse", mu=100.0)
    assert QuantSpec.from_dict(json.loads(json.dumps(spec.as_dict()))) == spec
    with pytest.raises(QuantbenchError, match="'bitz'"):
        QuantSpec.from_dict({"bitz": 8})


@pytest.mark.parametrize(
    "name, wbits, abits",
    [("w8a8", 8, 8), ("w4a8", 4, 8), ("w4a4", 4, 4), ("w2a8", 2, 8), ("w16a16", 16, 16), ("W8A8", 8, 8)],
)
def test_parse_wxay_conventions(name, wbits, abits):
    plan = parse_scheme(name)
    w, a = plan.default.weight, plan.default.act
    assert plan.scheme == name.lower()
    assert (w.bits, w.signed, w.symmetric, w.per_channel, w.axis, w.dynamic) == (
        wbits,
        True,
        True,
        True,
        0,
        False,
    )
    assert (a.bits, a.signed, a.symmetric, a.per_channel, a.dynamic) == (abits, False, False, False, False)
    assert a.qmin == 0 and a.qmax == 2**abits - 1


def test_parse_weight_only_dynamic_and_fp32():
    w8 = parse_scheme("w8")
    assert w8.default.weight.bits == 8 and w8.default.act is None
    dyn = parse_scheme("dynamic")
    assert dyn.default.weight.bits == 8 and dyn.default.weight.per_channel
    assert dyn.default.act.dynamic and not dyn.default.act.signed and not dyn.default.act.symmetric
    assert dyn.default.act.bits == 8
    fp = parse_scheme("fp32")
    assert fp.default == FP32_LAYER and fp.is_fp32 and not w8.is_fp32


def test_parse_options_reach_the_specs():
    plan = parse_scheme(
        "w4a8", per_channel=False, weight_observer="mse", act_observer="entropy", companding="mulaw", mu=63.0
    )
    w, a = plan.default.weight, plan.default.act
    assert not w.per_channel and w.observer == "mse" and w.companding == "mulaw" and w.mu == 63.0
    assert a.observer == "entropy" and a.companding == "none"  # companding is for weights only
    assert parse_scheme("w8a8", first_last="fp32").first_last == "fp32"


@pytest.mark.parametrize("bad", ["w1a8", "w8a17", "w0", "int8", "", "w8a", "a8", "w4a4x", "8"])
def test_bad_scheme_names(bad):
    with pytest.raises(QuantbenchError) as err:
        parse_scheme(bad)
    msg = str(err.value)
    assert repr(bad) in msg
    assert ("expected" in msg) and ("wXaY" in msg or "2..16" in msg)


def test_entropy_weights_per_channel_is_rejected_clearly():
    with pytest.raises(QuantbenchError, match="per-tensor only"):
        parse_scheme("w8a8", weight_observer="entropy")
    assert (
        parse_scheme("w8a8", weight_observer="entropy", per_channel=False).default.weight.observer
        == "entropy"
    )


def test_for_layer_policies_and_overrides():
    plan = parse_scheme("w4a4")
    special = LayerSpec(QuantSpec(bits=6, per_channel=True), None)
    mixed = plan.replace(overrides={"fc": special})
    assert mixed.for_layer("conv2") == plan.default
    assert mixed.for_layer("fc", is_last=True) == special  # overrides beat the policy

    same = plan.for_layer("conv1", is_first=True)
    assert same.weight.bits == 4 and same.act.bits == 4
    int8 = plan.replace(first_last="int8").for_layer("conv1", is_first=True)
    assert int8.weight == plan.default.weight.replace(bits=8)
    assert int8.act == plan.default.act.replace(bits=8)
    assert plan.replace(first_last="fp32").for_layer("fc", is_last=True).is_fp32
    assert plan.replace(first_last="fp32").for_layer("mid").weight.bits == 4
    # weight-only plans keep activations FP32 under the int8 policy
    assert parse_scheme("w4", first_last="int8").for_layer("c", is_first=True).act is None


def test_plan_dict_round_trip_through_json():
    plan = parse_scheme("w4a8", first_last="int8").replace(
        overrides={"layer1.0.conv1": LayerSpec(QuantSpec(bits=2, per_channel=True), None), "fc": FP32_LAYER}
    )
    again = QuantPlan.from_dict(json.loads(json.dumps(plan.as_dict())))
    assert again == plan
    assert QuantPlan.from_dict(parse_scheme("fp32").as_dict()) == parse_scheme("fp32")


def test_plan_validation():
    with pytest.raises(QuantbenchError, match="first_last"):
        QuantPlan(default=FP32_LAYER, first_last="int4")
    with pytest.raises(QuantbenchError, match="'extra'"):
        QuantPlan.from_dict({"default": {}, "extra": 1})
    with pytest.raises(QuantbenchError, match="override"):
        QuantPlan(default=FP32_LAYER, overrides={"fc": "int8"})  # type: ignore[dict-item]
    with pytest.raises(QuantbenchError, match="layer spec"):
        LayerSpec.from_dict({"weights": None})


def test_plan_keeps_its_own_copy_of_overrides():
    overrides = {"fc": FP32_LAYER}
    plan = QuantPlan(default=parse_scheme("w8a8").default, overrides=overrides)
    overrides["conv1"] = FP32_LAYER
    assert list(plan.overrides) == ["fc"]
    assert hash(plan) == hash(QuantPlan(default=plan.default, overrides={"x": FP32_LAYER}))
