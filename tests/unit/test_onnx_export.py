"""FP32 ONNX export: the file is valid, has a dynamic batch axis, and ONNX Runtime matches torch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from quantbench.engines.onnx_export import INPUT_NAME, OUTPUT_NAME, export_fp32_onnx
from quantbench.errors import QuantbenchError

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'quantbench[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'quantbench[onnx]')")


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)  # non-trivial BN statistics, folded by the exporter
    bn.running_var.uniform_(0.5, 2.0)
    return model


def _session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_export_matches_torch_in_onnxruntime(tmp_path):
    model = _tiny_cnn().train()  # export must use eval mode and then restore train mode
    path = export_fp32_onnx(model, tmp_path / "sub" / "tiny.onnx", (3, 16, 16))
    assert path.is_file() and model.training
    onnx.checker.check_model(str(path))
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in sess.get_outputs()] == [OUTPUT_NAME]
    model.eval()
    for batch in (1, 3, 7):  # batch sizes other than the export's dummy batch
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            expected = model(x).numpy()
        got = sess.run(None, {INPUT_NAME: x.numpy()})[0]
        assert got.shape == (batch, 5)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_dynamic_batch_axis_is_symbolic(tmp_path):
    path = export_fp32_onnx(_tiny_cnn(), tmp_path / "dyn.onnx", (3, 8, 8))
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [3, 8, 8]


def test_static_batch_when_asked(tmp_path):
    path = export_fp32_onnx(_tiny_cnn(), tmp_path / "static.onnx", (3, 8, 8), dynamic_batch=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].HasField("dim_value")


def test_bn_is_folded_and_no_warning_noise(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the legacy exporter's notice is silenced
        path = export_fp32_onnx(_tiny_cnn(), tmp_path / "fold.onnx", (3, 8, 8))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops


@pytest.mark.parametrize("shape", [(3, 16), (3, 0, 16), (3, 16.0, 16)])
def test_bad_input_shape_is_refused(tmp_path, shape):
    with pytest.raises(QuantbenchError, match="input_shape"):
        export_fp32_onnx(_tiny_cnn(), tmp_path / "bad.onnx", shape)
