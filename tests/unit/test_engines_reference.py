"""The engines' own INT8 quantizers (ORT quantize_static, NNCF) used as references for ours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'quantbench[onnx]')")

from quantbench.engines.onnx_export import export_fp32_onnx  # noqa: E402
from quantbench.engines.onnxruntime_engine import OrtSession, optimized_op_counts  # noqa: E402
from quantbench.engines.reference import nncf_quantize_openvino, ort_quantize_static  # noqa: E402
from quantbench.errors import QuantbenchError  # noqa: E402

SHAPE = (3, 8, 8)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    d = tmp_path_factory.mktemp("ref")
    calib = np.random.default_rng(0).standard_normal((16, *SHAPE), dtype=np.float32)
    return model, export_fp32_onnx(model, d / "fp32.onnx", SHAPE), calib, d


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_ort_quantize_static_gives_integer_kernels_close_to_fp32(fp32, method):
    model, path, calib, d = fp32
    out = ort_quantize_static(path, d / f"ort_{method}.onnx", calib, method=method)
    assert not (d / f"ort_{method}_pre.onnx").exists()
    assert optimized_op_counts(out, d).get("QLinearConv", 0) == 2
    sess = OrtSession(out, SHAPE, 1, "int8")
    with torch.no_grad():
        ref = model(torch.from_numpy(calib)).numpy()
    got = sess.run(calib)
    cos = (got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref)
    assert cos > 0.99


def test_ort_quantize_static_rejects_bad_input(fp32):
    _, path, calib, d = fp32
    with pytest.raises(QuantbenchError, match="calibration method 'kl' unknown"):
        ort_quantize_static(path, d / "x.onnx", calib, method="kl")
    with pytest.raises(QuantbenchError, match=r"must be \(N, C, H, W\)"):
        ort_quantize_static(path, d / "x.onnx", calib[0])


def test_nncf_model_runs_int8_in_openvino(fp32):
    pytest.importorskip("nncf", reason="nncf not installed (pip install 'quantbench[nncf]')")
    pytest.importorskip("openvino", reason="openvino not installed (pip install 'quantbench[openvino]')")
    from quantbench.engines.openvino_engine import OpenVinoSession

    _, path, calib, d = fp32
    xml = nncf_quantize_openvino(path, d / "nncf.xml", calib)
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    sess = OpenVinoSession(xml, SHAPE, 1, "int8")
    assert sess.info["int8_layers"] >= 2
    assert sess.run(calib[:2]).shape == (2, 4)


@pytest.mark.parametrize("flags, reduced", [("fpu sse avx2 fma", True), ("fpu avx2 avx512f avx512_vnni", False)])
def test_ort_reference_takes_reduce_range_where_ort_recommends_it(fp32, tmp_path, monkeypatch, flags, reduced):
    """ORT's advice: 7-bit weights on x86 without VNNI (its u8 x s8 kernels saturate), full range elsewhere."""
    import onnx
    from onnx import numpy_helper

    from quantbench.engines.reference import ort_recommended_reduce_range

    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setenv("QUANTBENCH_CPUINFO", str(tmp_path / "cpuinfo"))
    assert ort_recommended_reduce_range() is reduced
    _, path, calib, d = fp32
    out = ort_quantize_static(path, tmp_path / "ort.onnx", calib)
    codes = [numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer
             if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    widest = max(int(np.abs(c.astype(np.int16)).max()) for c in codes)
    assert (widest <= 64) if reduced else (widest > 64)
