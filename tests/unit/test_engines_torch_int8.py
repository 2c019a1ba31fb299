"""torch-int8: our QuantizedModel lowered to PyTorch's quantized kernels, with our scales."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from quantbench.engines import ENGINES
from quantbench.engines.torch_int8_engine import lower_to_torch_int8
from quantbench.errors import QuantbenchError
from quantbench.quant.prepare import calibrate, prepare
from quantbench.quant.spec import parse_scheme

SHAPE = (3, 8, 8)

ok, why = ENGINES.get("torch-int8").available()
pytestmark = pytest.mark.skipif(not ok, reason=f"torch-int8: {why}")


class Net(nn.Module):
    """conv-ReLU-maxpool, a residual block, a conv into a float op (sigmoid), pooling, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.r0 = nn.ReLU()
        self.mp = nn.MaxPool2d(2)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.r2 = nn.ReLU()
        self.c3 = nn.Conv2d(8, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mp(self.r0(self.c0(x)))
        x = self.r2(self.c2(self.r1(self.c1(x))) + x)
        x = torch.sigmoid(self.c3(x))  # c3's output is not quantized next: a float layer
        return self.fc(torch.flatten(self.pool(x), 1))


def _qm(scheme: str = "w8a8", **kw):
    torch.manual_seed(0)
    qm = prepare(Net().eval(), parse_scheme(scheme, **kw))
    calibrate(qm, torch.rand(64, *SHAPE))
    return qm


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_lowering_uses_integer_kernels_where_the_graph_allows_and_matches_the_simulation():
    qm = _qm()
    gm, counts = lower_to_torch_int8(qm)
    # c0 (through ReLU+max-pool), c1 (ConvReLU), c2 (into the quantized add): int8;
    # c3 feeds a sigmoid and fc produces float logits: float layers with our fake-quantized weights.
    assert counts == {"int8_layers": 3, "float_layers": 2, "int8_adds": 1}
    kinds = {type(m).__name__ for m in gm.modules()}
    assert {"ConvReLU2d", "Conv2d"} <= kinds and "FakeQuant" not in kinds
    x = torch.rand(16, *SHAPE)
    with torch.no_grad():
        sim = qm(x).numpy()
        got = gm(x).numpy()
    assert got.shape == sim.shape
    assert _cos(got, sim) >= 0.999
    np.testing.assert_allclose(got, sim, atol=0.05 * float(np.abs(sim).max()))


def test_fewer_activation_bits_stay_exact_through_float_layers():
    qm = _qm("w4a4", joins="same")  # every quantized activation 4-bit
    gm, counts = lower_to_torch_int8(qm)
    assert counts["int8_layers"] == 0  # a 4-bit output cannot come out of an 8-bit kernel
    x = torch.rand(8, *SHAPE)
    with torch.no_grad():
        np.testing.assert_allclose(gm(x).numpy(), qm(x).numpy(), rtol=1e-4, atol=1e-5)


def test_eight_bit_joins_of_low_bit_activations_take_the_integer_kernels():
    """At w4a4 the residual add's inputs are 8-bit (QuantPlan.joins): c2, whose output only the add reads,
    runs on an int8 kernel; the layers with 4-bit outputs and the add (its sum feeds c3 at 4 bits) stay float."""
    qm = _qm("w4a4")
    gm, counts = lower_to_torch_int8(qm)
    assert counts == {"int8_layers": 1, "float_layers": 4, "int8_adds": 0}
    x = torch.rand(16, *SHAPE)
    with torch.no_grad():
        sim, got = qm(x).numpy(), gm(x).numpy()
    assert _cos(got, sim) >= 0.999
    np.testing.assert_allclose(got, sim, atol=0.05 * float(np.abs(sim).max()))


def test_refuses_what_it_cannot_run():
    with pytest.raises(QuantbenchError, match="companded"):
        lower_to_torch_int8(_qm("w8a8", companding="mulaw"))
    with pytest.raises(QuantbenchError, match="dynamic"):
        lower_to_torch_int8(_qm("dynamic"))
    with pytest.raises(QuantbenchError, match="calibrat"):
        lower_to_torch_int8(prepare(Net().eval(), parse_scheme("w8a8")))
    with pytest.raises(QuantbenchError, match="QuantizedModel"):
        lower_to_torch_int8(Net())
