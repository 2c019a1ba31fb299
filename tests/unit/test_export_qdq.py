"""QDQ ONNX export: our codes and scales, in the format ONNX Runtime fuses, refusing what QDQ cannot say."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.fake import quantize
from quantbench.quant.prepare import calibrate, prepare
from quantbench.quant.spec import parse_scheme

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'quantbench[onnx]')")
ort = pytest.importorskip(
    "onnxruntime", reason="onnxruntime is not installed (pip install 'quantbench[onnx]')"
)
from onnx import numpy_helper  # noqa: E402

from quantbench.engines.export_qdq import export_qdq_onnx, ort_weight_type, qdq_metadata  # noqa: E402
from quantbench.engines.onnxruntime_engine import optimized_op_counts  # noqa: E402

SHAPE = (3, 8, 8)
WT = ort_weight_type()  # u8 weights where ONNX Runtime's u8 x s8 kernels saturate (x86 without VNNI)


class Net(nn.Module):
    """Stem conv-BN-ReLU, a residual block with an identity shortcut, pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.shortcut = nn.Identity()
        self.r2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.r2(self.c2(self.r1(self.c1(x))) + self.shortcut(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _qm(scheme: str = "w8a8", **kw):
    torch.manual_seed(0)
    model = Net().eval()
    bn = model.stem[1]
    bn.running_mean.uniform_(-0.3, 0.3)
    bn.running_var.uniform_(0.5, 2.0)
    qm = prepare(model, parse_scheme(scheme, **kw))
    calibrate(qm, torch.randn(64, *SHAPE))
    return qm


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    qm = _qm()
    path = export_qdq_onnx(qm, tmp_path_factory.mktemp("qdq") / "net.onnx", SHAPE)
    return qm, path, onnx.load(str(path))


def _session(path, optimize: bool = True):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimize:  # the reference semantics of the ONNX operators, no fusion
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _sim_with_int32_bias(qm, x):
    """The simulation with each bias rounded to the int32 grid s_in * s_w the export uses."""
    ref = copy.deepcopy(qm)
    for info in ref.layers:
        layer = ref.layer(info.name)
        if layer.bias is None or info.input_quantizer is None or not hasattr(layer, "weight_fq"):
            continue
        grid = ref.net.get_submodule(info.input_quantizer).qparams()[0] * layer.weight_fq.qparams()[0]
        layer.bias.data = torch.round(layer.bias.data / grid) * grid
    with torch.no_grad():
        return ref(x).numpy()


def test_export_is_valid_and_matches_the_simulation(exported, tmp_path):
    qm, path, model = exported
    onnx.checker.check_model(model, full_check=True)
    x = torch.randn(7, *SHAPE)
    with torch.no_grad():
        sim = qm(x).numpy()
    # ONNX's operator semantics (no fusion) compute the simulation, whatever the CPU.
    got = _session(path, optimize=False).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, sim, atol=2e-3 * float(np.abs(sim).max()))
    # Fused integer kernels too, with the weight storage this CPU needs (u8 where u8 x s8 saturates).
    fused = export_qdq_onnx(qm, tmp_path / "fused.onnx", SHAPE, weight_type=WT)
    got = _session(fused).run(None, {"input": x.numpy()})[0]
    # Same codes and scales; only the int32 bias grid and the engine's requantization differ.
    np.testing.assert_allclose(got, sim, atol=2e-3 * float(np.abs(sim).max()))


def test_uint8_weight_storage_holds_the_same_values(exported, tmp_path):
    qm, path, model = exported
    u8 = onnx.load(str(export_qdq_onnx(qm, tmp_path / "u8.onnx", SHAPE, weight_type="uint8")))
    s8_codes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".weight_q")}
    u8_init = {t.name: numpy_helper.to_array(t) for t in u8.graph.initializer}
    assert s8_codes
    for name, codes in s8_codes.items():
        assert u8_init[name].dtype == np.uint8
        np.testing.assert_array_equal(u8_init[name].astype(np.int16) - 128, codes.astype(np.int16))
        assert (u8_init[name.replace(".weight_q", ".weight_zero_point")] == 128).all()
    x = torch.randn(4, *SHAPE)
    ref = _session(path, optimize=False).run(None, {"input": x.numpy()})[0]
    got = _session(tmp_path / "u8.onnx", optimize=False).run(None, {"input": x.numpy()})[0]
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(QuantbenchError, match="weight_type must be"):
        export_qdq_onnx(qm, tmp_path / "x.onnx", SHAPE, weight_type="int4")


@pytest.mark.parametrize("scheme", ["w8a8", "w4a4"])
def test_onnx_semantics_equal_the_simulation_with_int32_bias(scheme, tmp_path):
    qm = _qm(scheme)
    path = export_qdq_onnx(qm, tmp_path / f"{scheme}.onnx", SHAPE, weight_type=WT)
    x = torch.randn(6, *SHAPE)
    ref = _sim_with_int32_bias(qm, x)
    got = _session(path, optimize=False).run(None, {"input": x.numpy()})[0]
    # Up to float summation order (a value on a rounding boundary may land one level apart).
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-3 * float(np.abs(ref).max()))


def test_weights_are_int8_codes_with_our_per_channel_scales(exported):
    qm, _, model = exported
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    float_weights = [n for n, v in inits.items() if v.dtype == np.float32 and v.ndim >= 2]
    assert float_weights == []  # no float weight anywhere: weights are integer initializers
    dq_of = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for name, fq in qm.weight_quantizers():
        codes = inits[f"{name}.weight_q"]
        assert codes.dtype == np.int8
        dq = dq_of[f"{name}.weight_q"]
        assert {a.name: a.i for a in dq.attribute}.get("axis") == 0
        scale, zp = fq.qparams()
        np.testing.assert_array_equal(inits[dq.input[1]], scale.numpy())
        assert not inits[dq.input[2]].any()  # symmetric: zero point 0
        expected = quantize(qm.layer(name).weight.detach(), scale, zp, fq.spec).numpy()
        np.testing.assert_array_equal(codes, expected)
        bias = dq_of.get(f"{name}.bias_q")
        assert bias is not None and inits[f"{name}.bias_q"].dtype == np.int32  # QLinearConv/QGemm want int32


def test_activation_scales_are_ours_and_duplicates_merged(exported):
    qm, path, model = exported
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    merged = json.loads(qdq_metadata(path)["quantbench.merged_quantizers"])
    # The block output is quantized for the next op and, through the identity shortcut, for the add.
    assert any("aq_shortcut" in group for group in merged)
    dropped = {n for group in merged for n in group[1:]}
    q_scales = {n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for name, fq in qm.act_quantizers():
        scale, zp = fq.qparams()
        if name in dropped:
            keeper = next(g[0] for g in merged if name in g)
            assert inits[f"{keeper}.scale"] == pytest.approx(float(scale), rel=0, abs=0)
            continue
        assert f"{name}.scale" in q_scales
        assert inits[f"{name}.scale"] == np.float32(scale)
        assert inits[f"{name}.zero_point"].dtype == np.uint8 and int(inits[f"{name}.zero_point"]) == int(zp)


def test_metadata_records_the_format(exported):
    _, path, _ = exported
    meta = qdq_metadata(path)
    assert "uint8" in meta["quantbench.activations"] and "int8" in meta["quantbench.weights"]
    assert "zero point 0" in meta["quantbench.weights"] and "int32" in meta["quantbench.bias"]
    assert json.loads(meta["quantbench.plan"])["scheme"] == "w8a8"


def test_onnxruntime_fuses_it_into_integer_kernels(exported, tmp_path):
    _, path, _ = exported
    ops = optimized_op_counts(path, tmp_path)
    assert ops.get("QLinearConv", 0) == 3 and ops.get("Conv", 0) == 0
    assert ops.get("QLinearAdd", 0) == 1 and ops.get("QGemm", 0) == 1


def test_strided_shortcut_keeps_the_residual_add_integer(tmp_path):
    from quantbench.models.cifar_resnet import BasicBlock

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), BasicBlock(8, 8), BasicBlock(8, 16, stride=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ).eval()  # fmt: skip
    qm = prepare(model, parse_scheme("w8a8"))
    calibrate(qm, torch.randn(32, *SHAPE))
    path = export_qdq_onnx(qm, tmp_path / "strided.onnx", SHAPE, weight_type=WT)
    # The first block's output feeds the next conv (quantized) and the option-A shortcut's
    # slices: the slices are moved in front of a float copy of the add, so the add itself fuses.
    ops = optimized_op_counts(path, tmp_path)
    assert ops.get("QLinearAdd", 0) == 2 and ops.get("Add", 0) == 1 and ops.get("Conv", 0) == 0
    x = torch.randn(5, *SHAPE)
    ref = _sim_with_int32_bias(qm, x)
    for optimize in (False, True):
        got = _session(path, optimize=optimize).run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-3 * float(np.abs(ref).max()))


def test_maxpool_after_conv_relu_runs_on_integers(tmp_path):
    # The ResNet stem: conv -> ReLU -> max-pool -> (conv and identity shortcut). The quantizer
    # sits on the pool's output; the export repeats it in front of the pool (exact: Q is
    # monotone), so the stem conv fuses into QLinearConv instead of running in float.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    qm = prepare(model, parse_scheme("w8a8"))
    calibrate(qm, torch.randn(32, *SHAPE))
    path = export_qdq_onnx(qm, tmp_path / "pool.onnx", SHAPE, weight_type=WT)
    nodes = onnx.load(str(path)).graph.node
    by_out = {o: n for n in nodes for o in n.output}
    pool = next(n for n in nodes if n.op_type == "MaxPool")
    assert by_out[pool.input[0]].op_type == "DequantizeLinear"
    ops = optimized_op_counts(path, tmp_path)
    assert ops.get("QLinearConv", 0) == 2 and ops.get("Conv", 0) == 0
    x = torch.randn(5, *SHAPE)
    ref = _sim_with_int32_bias(qm, x)
    for optimize in (False, True):
        got = _session(path, optimize=optimize).run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-3 * float(np.abs(ref).max()))


def test_low_bits_use_8bit_containers_restricted_to_their_range(tmp_path):
    qm = _qm("w4a4")
    path = export_qdq_onnx(qm, tmp_path / "w4a4.onnx", SHAPE, weight_type=WT)
    model = onnx.load(str(path))
    assert "4-bit" in qdq_metadata(path)["quantbench.low_bit"]
    shift = 128 if WT == "uint8" else 0
    codes = [numpy_helper.to_array(t).astype(np.int16) - shift for t in model.graph.initializer
             if t.name.endswith(".weight_q")]
    assert codes and all(c.min() >= -8 and c.max() <= 7 for c in codes)
    x = torch.randn(5, *SHAPE)
    ref = _sim_with_int32_bias(qm, x)
    got = _session(path).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_per_tensor_weights_export(tmp_path):
    qm = _qm("w8a8", per_channel=False)
    path = export_qdq_onnx(qm, tmp_path / "pt.onnx", SHAPE, weight_type=WT)
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        sim = qm(x).numpy()
    got = _session(path).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, sim, atol=2e-3 * float(np.abs(sim).max()))


def test_dead_channel_bias_fits_int32(tmp_path):
    # An all-zero weight channel gets the smallest scale; its bias would overflow the int32 grid
    # s_in * s_w, so the export enlarges that (irrelevant: all codes are 0) scale instead.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 2)).eval()
    with torch.no_grad():
        model[0].weight[1].zero_()
        model[0].bias[1] = 50.0
    qm = prepare(model, parse_scheme("w8a8"))
    calibrate(qm, torch.randn(32, *SHAPE))
    path = export_qdq_onnx(qm, tmp_path / "dead.onnx", SHAPE, weight_type=WT)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    assert np.abs(inits["0.bias_q"].astype(np.int64)).max() < 2**31 - 1
    x = torch.randn(4, *SHAPE)
    got = _session(path, optimize=False).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        sim = qm(x).numpy()
    np.testing.assert_allclose(got, sim, atol=1e-3 * float(np.abs(sim).max()))


def test_bias_beyond_int32_stays_float_and_is_listed(tmp_path):
    # Vanishing activations (a deep randomly initialised net) give the classifier a tiny input
    # scale: its bias cannot be put on the int32 grid s_in * s_w. It stays float (exact), the
    # layer runs in float between Q/DQ, and the metadata says which layer and why.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 2)).eval()
    with torch.no_grad():
        model[0].weight.mul_(1e-7)
        model[0].bias.fill_(1e-7)
        model[3].bias.fill_(0.5)
    qm = prepare(model, parse_scheme("w8a8"))
    calibrate(qm, torch.randn(32, *SHAPE))
    path = export_qdq_onnx(qm, tmp_path / "tiny.onnx", SHAPE, weight_type=WT)
    listed = json.loads(qdq_metadata(path)["quantbench.float_bias_layers"])
    assert len(listed) == 1 and listed[0].startswith("3: |bias|/(s_in*s_w)")
    x = torch.randn(4, *SHAPE)
    ref = _sim_with_int32_bias(qm, x)
    ref_float = qm(x).detach().numpy()
    got = _session(path, optimize=False).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, ref_float, rtol=0, atol=1e-5)
    assert np.isfinite(ref).all()


@pytest.mark.parametrize(
    ("scheme", "kw", "message"),
    [
        ("w8a8", {"companding": "mulaw"}, "companding"),
        ("dynamic", {}, "dynamic"),
        ("w16a16", {}, "16 bits"),
    ],
)
def test_formats_qdq_cannot_express_are_refused(tmp_path, scheme, kw, message):
    qm = _qm(scheme, **kw)
    with pytest.raises(QuantbenchError, match=message):
        export_qdq_onnx(qm, tmp_path / "x.onnx", SHAPE)


def test_bad_arguments(tmp_path):
    with pytest.raises(QuantbenchError, match="QuantizedModel"):
        export_qdq_onnx(Net(), tmp_path / "x.onnx", SHAPE)
    qm = _qm()
    with pytest.raises(QuantbenchError, match="input_shape"):
        export_qdq_onnx(qm, tmp_path / "x.onnx", (3, 8))
    with pytest.raises(QuantbenchError, match="opset"):
        export_qdq_onnx(qm, tmp_path / "x.onnx", SHAPE, opset=11)
    fresh = prepare(Net().eval(), parse_scheme("w8a8"))  # never calibrated
    with pytest.raises(QuantbenchError, match="calibrat"):
        export_qdq_onnx(fresh, tmp_path / "x.onnx", SHAPE)
