"""LiteRT specifics the engine contract does not reach: zero-padded shortcuts, fixed-batch files, the
conversion cache, refusals. Skipped (with the reason) where litert-torch / ai-edge-litert are absent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantbench.engines import Deployable, get_engine, load_session
from quantbench.errors import QuantbenchError
from quantbench.quant.prepare import calibrate, prepare
from quantbench.quant.ptq import PTQConfig, quantize_ptq
from quantbench.quant.spec import parse_scheme

ok, reason = get_engine("litert").available()
pytestmark = pytest.mark.skipif(not ok, reason=f"LiteRT engine: {reason}")

SHAPE = (3, 8, 8)


class PadShortcut(nn.Module):
    """ResNet-20's option-A block: a strided conv path added to a zero-padded, subsampled shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))
        y = F.relu(self.conv(x) + short)
        return self.fc(y.mean((2, 3)).view(y.size(0), -1))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def pad_model():
    torch.manual_seed(0)
    model = PadShortcut().eval()
    x = torch.randn(64, *SHAPE)
    qm = quantize_ptq(model, PTQConfig("w8a8", "minmax", calib_size=64), x)
    return model, qm


def test_int8_with_a_zero_padded_shortcut_runs_integer_kernels_and_matches_the_simulation(pad_model, tmp_path):
    model, qm = pad_model
    sess = load_session("litert", Deployable(model, qm, SHAPE, name="pad"), "int8", threads=1, workdir=tmp_path)
    # The strided conv runs on int8 kernels. The stem stays float: its output feeds two quantizers (the
    # conv's and the shortcut's), so no single int8 output exists for it (docs/decisions.md).
    assert sess.info["int8_layers"] >= 1 and sess.info["ops"].get("CONV_2D", 0) == 2
    x = torch.randn(9, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sim = qm(x).numpy()
    out = sess.run(x.numpy())  # 9 images: one padded chunk of the fixed-batch file
    assert _cos(out, sim) >= 0.99 and (out.argmax(1) == sim.argmax(1)).mean() >= 0.8
    # the batch-1 file and the chunked run agree image by image (no batch baked into the graph wrongly)
    np.testing.assert_allclose(sess.run(x[3:4].numpy())[0], out[3], rtol=1e-5, atol=1e-5)
    # one file per batch size the session was asked for
    assert sorted(p.name for p in tmp_path.glob("*.tflite")) == ["pad_int8_b1.tflite", "pad_int8_b32.tflite"]


def test_conversion_cache_follows_the_weights(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = np.random.default_rng(0).standard_normal((1, *SHAPE), dtype=np.float32)
    first = load_session("litert", Deployable(model, None, SHAPE), "fp32", threads=1, workdir=tmp_path / "a").run(x)
    with torch.no_grad():
        model[4].bias.add_(1.0)  # same object, new weights: must not reuse the earlier conversion
    second = load_session("litert", Deployable(model, None, SHAPE), "fp32", threads=1, workdir=tmp_path / "b").run(x)
    np.testing.assert_allclose(second, first + 1.0, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(second, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_formats_lite_rt_cannot_hold_are_refused_with_the_reason(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    qm = prepare(model, parse_scheme("w8a8", companding="mulaw"))
    calibrate(qm, torch.randn(16, *SHAPE))
    with pytest.raises(QuantbenchError, match="LiteRT export: .*mulaw companding"):
        load_session("litert", Deployable(model, qm, SHAPE), "int8", workdir=tmp_path)
