"""Split computing core: exact edge/cloud composition, MACs that add up, feature quantizer, latency model."""

from __future__ import annotations

import math

import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.measure.macs import count_macs
from quantbench.models import MODELS, build_model, model_info
from quantbench.splitting.experiment import anonymization, split_costs
from quantbench.splitting.features import FeatureQuantizer
from quantbench.splitting.latency import PROFILES, best_split, estimate_latency, parse_profile
from quantbench.splitting.splitter import block_names, num_split_points, split_model

SPLITTABLE = [n for n in MODELS.names() if n != "lenet"]
SMALL = {"resnet18": 64, "resnet34": 64, "resnet50": 64, "resnet101": 64, "vgg11": 32, "vgg11_bn": 32, "vgg16": 32,
         "vgg16_bn": 32, "mobilenet_v2": 64}


@pytest.mark.parametrize("name", SPLITTABLE)
def test_edge_then_cloud_equals_the_model_exactly_at_every_split(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    c, h, w = model_info(name)["input_shape"]
    size = SMALL.get(name, h)
    x = torch.randn(2, c, size, size)
    with torch.no_grad():
        ref = model(x)
        for k in range(num_split_points(model) + 1):
            sp = split_model(model, k)
            assert torch.equal(sp.cloud(sp.edge(x)), ref), (name, k)


def test_resnet_blocks_are_counted_globally_and_macs_add_up():
    r101 = build_model("resnet101")
    assert num_split_points(r101) == 3 + 4 + 23 + 3
    assert block_names(r101)[:3] == ["stem", "layer1.0", "layer1.1"] and block_names(r101)[-1] == "layer4.2"
    r20 = build_model("resnet20").eval()
    total = count_macs(r20, (3, 32, 32)).per_image_macs
    for k in (0, 1, 5, 9):
        c = split_costs(r20, k, (3, 32, 32))
        assert c["edge_macs"] + c["cloud_macs"] == total and c["total_macs"] == total
    assert split_costs(r20, 3, (3, 32, 32))["feature_shape"] == [16, 32, 32]
    with pytest.raises(QuantbenchError, match="at residual block 0..9"):
        split_model(r20, 10)


@pytest.mark.parametrize("companding", ["none", "mulaw"])
@pytest.mark.parametrize("qbins", [2, 4, 8, 256])
def test_feature_quantizer_levels_error_and_side_info(qbins, companding):
    z = torch.relu(torch.randn(3, 4, 5, 5)) * torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1, 1, 1)
    fq = FeatureQuantizer(qbins, companding=companding)
    sym, side = fq.quantize(z)
    assert sym.dtype == torch.uint8 and int(sym.max()) <= qbins - 1 and side.shape == (3, 2)
    assert len(torch.unique(sym)) <= qbins
    zh = fq.dequantize(sym, side)
    assert torch.allclose(fq.dequantize(*fq.quantize(zh)), zh, atol=1e-5)  # idempotent on its own levels
    if companding == "none":  # uniform: error at most half a step of each sample's range
        step = (side[:, 1] - side[:, 0]) / (qbins - 1)
        assert ((zh - z).abs().reshape(3, -1).max(1).values <= step / 2 + 1e-6).all()
    assert fq.side_bytes(3) == 24 and FeatureQuantizer(qbins, range_mode="calibrated").side_bytes(3) == 0


def test_mulaw_puts_more_levels_near_zero_and_noise_matches_the_step():
    z = torch.linspace(0, 1, 1001).reshape(1, 1, 1, -1)
    uni = FeatureQuantizer(8).roundtrip(z)
    mu = FeatureQuantizer(8, companding="mulaw").roundtrip(z)
    small = z < 0.05
    assert (mu - z).abs()[small].mean() < (uni - z).abs()[small].mean()
    fq = FeatureQuantizer(4)
    g = torch.Generator().manual_seed(0)
    zz = torch.rand(64, 2, 4, 4, generator=g)
    noisy = fq.noise(zz, generator=g)
    lo = zz.reshape(64, -1).min(1).values.reshape(-1, 1, 1, 1)
    hi = zz.reshape(64, -1).max(1).values.reshape(-1, 1, 1, 1)
    step = (hi - lo) / 3
    assert ((noisy - zz).abs() <= step / 2 + 1e-6).all() and (noisy - zz).abs().max() > 0.3 * step.min()
    with pytest.raises(QuantbenchError, match="qbins must be an integer in 2..256"):
        FeatureQuantizer(1)
    with pytest.raises(QuantbenchError, match="needs calibrate"):
        FeatureQuantizer(4, range_mode="calibrated").quantize(zz)


def test_latency_model_by_hand_and_best_split():
    pi, a100 = PROFILES["raspberry-pi-4b"], PROFILES["nvidia-a100"]
    est = estimate_latency(edge_macs=1e9, cloud_macs=4e9, coded_bytes=1000, bandwidth_mbps=8, edge=pi, cloud=a100)
    assert math.isclose(est["edge_s"], 2e9 / 9.69e9) and math.isclose(est["transfer_s"], 1e-3)
    assert math.isclose(est["cloud_s"], 8e9 / 19500e9)
    pts = [{"split": 1, "edge_macs": 1e8, "cloud_macs": 9e8, "coded_bytes": 1e5},
           {"split": 5, "edge_macs": 9e8, "cloud_macs": 1e8, "coded_bytes": 1e3}]
    plans = best_split(pts, [0.1, 1000.0], pi, a100)
    assert plans[0]["best"]["split"] == 5 and plans[1]["best"]["split"] == 1  # slow link: send less
    assert parse_profile("jetson=236").gmacs == 118.0
    with pytest.raises(QuantbenchError, match="NAME=GFLOPS"):
        parse_profile("jetson")


def test_anonymization_probe_recovers_more_from_early_features():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    x = torch.rand(300, 3, 32, 32)
    early = anonymization(model, 0, x[:200], x[200:], max_dims=512)
    late = anonymization(model, 9, x[:200], x[200:], max_dims=512)
    assert early["psnr_db"] > late["psnr_db"] and early["feature_dims"] <= 512


def test_profiles_say_where_their_rate_comes_from_and_a_measured_device_is_found_in_the_store(tmp_path):
    from quantbench.splitting.latency import measured_profiles
    from quantbench.store import ResultStore

    assert {p.source for p in PROFILES.values()} == {"published"}
    assert parse_profile("raspberry-pi-4b").label == "raspberry-pi-4b (published, 9.69 GFLOPS)"
    assert measured_profiles(tmp_path / "none.db") == {} and not (tmp_path / "none.db").exists()
    db = tmp_path / "s.db"
    ceilings = {"fp32": {"gmacs_per_s": 6.0, "kernel": "gemm 49x4608x512", "op": "onnxruntime MatMul"},
                "int8": {"gmacs_per_s": 15.0, "kernel": "gemm 49x4608x512", "op": "onnxruntime MatMulInteger u8s8"},
                "threads": 4, "runtime": "onnxruntime 1.20.1"}
    with ResultStore(db) as store:
        for rate in (5.0, 6.0):  # two imports of the same device: the later one wins
            run = store.start_run("device", config={"device": "raspberry-pi-4b", "ceilings": {
                **ceilings, "fp32": {**ceilings["fp32"], "gmacs_per_s": rate}}}, environment={})
            store.finish_run(run)
    pi = parse_profile("raspberry-pi-4b", db)  # measured on the device beats the study's figure of that name
    assert (pi.source, pi.gflops, pi.int8_gops) == ("measured", 12.0, 30.0)
    assert "onnxruntime MatMul gemm 49x4608x512, onnxruntime 1.20.1, 4 threads" in pi.detail
    assert parse_profile("nvidia-a100", db).source == "published"
    with pytest.raises(QuantbenchError, match=r"measured in .*s\.db: raspberry-pi-4b") as e:
        parse_profile("toaster", db)
    assert "\n" not in str(e.value)
