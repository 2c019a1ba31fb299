"""Quantizer placement, calibration, packed save/load and PTQ on tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.quant.fake import FakeQuant
from quantbench.quant.fold import fold_batchnorm
from quantbench.quant.prepare import QConv2d, QLinear, calibrate, prepare
from quantbench.quant.ptq import ALGOS, PTQConfig, quantize_ptq
from quantbench.quant.save import load_quantized, read_quantized_meta, save_quantized
from quantbench.quant.sensitivity import layer_sensitivity
from quantbench.quant.spec import parse_scheme


class TinyRes(nn.Module):
    """conv-bn-relu, a residual block with an add, pooling, a linear head."""

    def __init__(self, c: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


def _model() -> TinyRes:
    torch.manual_seed(0)
    m = TinyRes()
    for bn in (m.bn1, m.bn2):  # non-trivial statistics so folding matters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


X = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_fold_batchnorm_preserves_outputs():
    m = _model()
    gm = fold_batchnorm(m)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in gm.modules())
    torch.testing.assert_close(gm(X), m(X), rtol=1e-5, atol=1e-5)


def test_quantizer_placement_follows_integer_kernels():
    qm = prepare(_model(), parse_scheme("w8a8"))
    assert [(i.name, i.kind) for i in qm.layers] == [("conv1", "Conv2d"), ("conv2", "Conv2d"), ("fc", "Linear")]
    assert isinstance(qm.layer("conv1"), QConv2d) and isinstance(qm.layer("fc"), QLinear)
    sites = {s["value"]: s["consumers"] for s in qm.act_sites.values()}
    # the image, the conv1+relu output (shared by conv2 and the residual add), conv2's output into the add,
    # the relu2 output into the pool, and the flattened pooled features into fc. Logits stay float.
    assert set(sites) == {"x", "relu1", "conv2", "relu2", "flatten"}
    assert set(sites["relu1"]) == {"conv2", "add"}
    assert qm.layers[1].input_quantizer == "aq_relu1"
    nodes = {n.name: n for n in qm.net.graph.nodes}
    assert nodes["conv2"].args[0].target == "aq_relu1"  # quantized after the fused ReLU
    assert nodes["output"].args[0].target == "fc"  # logits are not quantized


def test_calibrated_activations_have_at_most_2_pow_bits_levels():
    qm = calibrate(prepare(_model(), parse_scheme("w4a3")), X)
    captured = {}
    fq = qm.net.get_submodule("aq_relu1")
    fq.register_forward_hook(lambda _m, _i, o: captured.setdefault("y", o))
    qm(X)
    assert captured["y"].unique().numel() <= 2**3
    w = qm.layer("conv2").weight_fq(qm.layer("conv2").weight)
    for c in range(w.shape[0]):
        assert w[c].unique().numel() <= 2**4


def test_untraceable_model_names_the_module():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                return self.conv(x)
            return self.conv(-x)

    with pytest.raises(QuantbenchError, match="Branchy cannot be traced"):
        prepare(Branchy(), parse_scheme("w8a8"))


def test_nan_in_calibration_is_a_clear_error():
    bad = X.clone()
    bad[0, 0, 0, 0] = float("nan")
    qm = prepare(_model(), parse_scheme("w8a8"))
    with pytest.raises(QuantbenchError, match=r"non-finite activations \(NaN/Inf\) at 'x'"):
        calibrate(qm, bad)
    with pytest.raises(QuantbenchError, match="no images"):
        calibrate(prepare(_model(), parse_scheme("w8a8")), X[:0])


@pytest.mark.parametrize("scheme, kw", [
    ("w8a8", {}), ("w4a8", {}), ("w3a5", {}), ("w2a8", {}), ("w8", {}), ("dynamic", {}),
    ("w8a8", {"per_channel": False}), ("w4a8", {"companding": "mulaw"}), ("w4a4", {"first_last": "int8"}),
])
def test_saved_and_reloaded_model_equals_in_memory_model(tmp_path, scheme, kw):
    m = _model()
    qm = quantize_ptq(m, PTQConfig(scheme=scheme, algo="minmax", **kw), X)
    path = tmp_path / "m.qbm"
    nbytes = save_quantized(qm, path, model_name=None, extra={"note": "test"})
    assert nbytes == path.stat().st_size
    again = load_quantized(path, model=TinyRes())
    with torch.no_grad():
        assert torch.equal(qm(X), again(X))
    assert read_quantized_meta(path)["plan"]["scheme"] == scheme


def test_packed_size_shrinks_with_bits(tmp_path):
    torch.manual_seed(0)
    big = nn.Sequential(nn.Conv2d(1, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(64 * 4 * 4, 256)).eval()
    xs = torch.randn(8, 1, 8, 8)
    fp32 = 4 * sum(p.numel() for p in big.parameters())
    sizes = {}
    for bits in (8, 4, 2):
        qm = quantize_ptq(big, PTQConfig(scheme=f"w{bits}a8", algo="minmax"), xs)
        sizes[bits] = save_quantized(qm, tmp_path / f"{bits}.qbm")
    n_weights = sum(m.weight.numel() for m in big.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert sizes[8] < fp32 / 3.5
    # halving the bit-width saves half of the weight bytes (INT4 = two per byte, INT2 = four per byte)
    assert sizes[8] - sizes[4] == pytest.approx(n_weights / 2, rel=0.01)
    assert sizes[4] - sizes[2] == pytest.approx(n_weights / 4, rel=0.01)


def test_ptq_int8_close_to_float_and_int2_worse():
    m = _model()
    with torch.no_grad():
        ref = m(X)
    err = {}
    for scheme in ("w8a8", "w2a8"):
        qm = quantize_ptq(m, PTQConfig(scheme=scheme, algo="mse"), X)
        with torch.no_grad():
            err[scheme] = float((qm(X) - ref).pow(2).mean() / ref.pow(2).mean())
    assert err["w8a8"] < 1e-3 < err["w2a8"]


def test_algorithms_registry_and_bad_names():
    assert {"minmax", "percentile", "mse", "entropy", "adaround"} <= set(ALGOS.names())
    with pytest.raises(QuantbenchError, match="unknown PTQ algorithm 'magic'"):
        PTQConfig(algo="magic").plan()
    with pytest.raises(QuantbenchError, match="w9z9"):
        PTQConfig(scheme="w9z9").plan()
    with pytest.raises(QuantbenchError, match="calibration data is required"):
        quantize_ptq(_model(), PTQConfig(scheme="w8a8"), None)


def test_layer_sensitivity_rows():
    qm = quantize_ptq(_model(), PTQConfig(scheme="w2a8", algo="minmax"), X)
    y = _model()(X).argmax(1)
    rows = layer_sensitivity(qm, (X, y), n_images=32)
    assert [r.layer for r in rows] == ["conv1", "conv2", "fc"]
    assert all(0 <= r.top1 <= 100 and r.sqnr_db < 40 for r in rows)
    assert all(isinstance(fq, FakeQuant) and fq.mode == "quant" for _, fq in qm.act_quantizers())
