"""The compiled LSQ/QDrop quantizer of block reconstruction, its eager fallback and the channels-last units.

These tests compile for real (inductor, the machine's C++ compiler): about 10-20 s in all.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantbench.quant import fused
from quantbench.quant.brecq import _ActQuant, _channels_last, reconstruct
from quantbench.quant.fake import scaled_grad
from quantbench.quant.prepare import calibrate, prepare
from quantbench.quant.spec import parse_scheme

SHAPE = (4, 16, 64, 64)  # 262,144 elements: exactly the size that takes the compiled path


@pytest.fixture
def fresh_status(monkeypatch: pytest.MonkeyPatch):
    """Each test sees the module as a new process would (and leaves no failure behind)."""
    monkeypatch.setattr(fused, "status", "unused")
    monkeypatch.delenv("QUANTBENCH_COMPILE", raising=False)
    yield
    fused._compiled.clear()


def _grads(fn, x0: torch.Tensor, scale0: torch.Tensor):
    x = x0.clone().requires_grad_(True)
    scale = scale0.clone().requires_grad_(True)
    out = fn(x, scale)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return out.detach(), x.grad, scale.grad


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_compiled_quantizer_equals_the_eager_one(fresh_status, drop: bool, per_channel: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = 3 * torch.randn(SHAPE, generator=g)  # values beyond both ends of the grid: clamp gradients matter
    scale0 = torch.full((SHAPE[1],), 0.2) if per_channel else torch.tensor(0.2)
    if per_channel:
        scale0 = scale0 * torch.linspace(0.5, 1.5, SHAPE[1])
    z, lo, hi, grad_scale = torch.tensor(3.0), torch.tensor(0.0), torch.tensor(15.0), 0.01
    keep = (torch.rand(SHAPE, generator=g) < 0.5).float() if drop else None

    def shaped(s: torch.Tensor) -> torch.Tensor:  # per channel: along dim 1 of an activation
        return s.reshape(1, -1, 1, 1) if s.dim() else s

    def compiled(x, scale):
        s = shaped(scaled_grad(scale, grad_scale))
        out = fused.fused_act_quant(x, s, z, lo, hi, keep)
        assert out is not None, fused.status
        return out

    got = _grads(compiled, x0, scale0)
    want = _grads(lambda x, scale: _ActQuant.apply(x, shaped(scale), z, 0, 15, grad_scale, keep), x0, scale0)
    assert fused.status == "compiled"
    assert torch.equal(got[0], want[0])  # the same values on the grid
    assert torch.equal(got[1] != 0, want[1] != 0)  # the same pass-through mask for x
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=0.0)  # g * s * (1/s) vs g: float rounding
    torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-4)  # the step's gradient: a sum, order differs


def test_small_tensors_and_no_grad_stay_eager(fresh_status) -> None:
    s, z, lo, hi = torch.tensor(0.1), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(15.0)
    assert fused.fused_act_quant(torch.rand(2, 3, 4, 4), s, z, lo, hi, None) is None
    with torch.no_grad():
        assert fused.fused_act_quant(torch.rand(SHAPE), s, z, lo, hi, None) is None
    assert fused.status == "unused"


def test_turned_off_by_the_environment(fresh_status, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTBENCH_COMPILE", "0")
    s, z, lo, hi = torch.tensor(0.1), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(15.0)
    assert fused.fused_act_quant(torch.rand(SHAPE), s, z, lo, hi, None) is None
    assert fused.status == "off" and not fused.fused_available()


def test_a_compiler_failure_falls_back_to_eager_for_the_process(fresh_status, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nsecond line")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    s, z, lo, hi = torch.tensor(0.1), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(15.0)
    x = torch.rand(SHAPE, requires_grad=True)
    assert fused.fused_act_quant(x, s, z, lo, hi, None) is None
    assert fused.status == "failed: RuntimeError: InvalidCxxCompiler: No working C++ compiler found"
    assert not fused.fused_available()


def test_the_fallback_is_said_once_per_reconstruction(fresh_status, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(fused, "status", "failed: InvalidCxxCompiler: No working C++ compiler found")
    model = Wide().eval()
    images = torch.rand(8, 3, 32, 32)
    qm = calibrate(prepare(model, parse_scheme("w4a4")), images)
    reconstruct(qm, model, images, iters=1, batch_size=8, drop_prob=0.5, progress=True)
    err = capsys.readouterr().err
    assert err.count("ran its activation quantizer eagerly (torch.compile failed: InvalidCxxCompiler") == 1


class Wide(nn.Module):
    """A residual block on 16x32x32 maps (batch 32: 524,288 elements per activation) and a head."""

    def __init__(self, flatten_by_view: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem, self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 5)
        for m in (self.stem, self.c1, self.c2, self.fc):
            m.weight.data = torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5
        self.flatten_by_view = flatten_by_view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.c2(F.relu(self.c1(x))) + x)
        x = F.adaptive_avg_pool2d(x, 4)
        return self.fc(x.view(x.size(0), -1) if self.flatten_by_view else torch.flatten(x, 1))


def test_channels_last_only_where_the_unit_runs_in_it() -> None:
    images = torch.rand(4, 3, 32, 32)
    for view, expect_cl in ((False, True), (True, False)):
        qm = calibrate(prepare(Wide(view).eval(), parse_scheme("w4a4")), images)
        seg = qm.net  # the whole network as one "unit": a view on a channels-last map fails there
        xq, xf, target, weight = _channels_last(seg, images, images, qm.net(images), None)
        assert xq.is_contiguous(memory_format=torch.channels_last) is expect_cl
        assert xf.is_contiguous(memory_format=torch.channels_last) is expect_cl
        assert target.dim() == 2 and weight is None


@pytest.mark.parametrize("flatten_by_view", [False, True])
def test_reconstruction_compiled_matches_eager(fresh_status, monkeypatch: pytest.MonkeyPatch,
                                               flatten_by_view: bool) -> None:
    """Same QDrop run with the compiled quantizer + channels-last units and fully eager: same outcome."""
    g = torch.Generator().manual_seed(1)
    images = F.avg_pool2d(torch.rand(64, 3, 34, 34, generator=g), 3, 1)
    model = Wide(flatten_by_view).eval()

    def run() -> list[dict]:
        qm = calibrate(prepare(model, parse_scheme("w4a4")), images)
        return reconstruct(qm, model, images, iters=30, drop_prob=0.5, batch_size=32)

    compiled = run()
    assert fused.status == "compiled"
    monkeypatch.setenv("QUANTBENCH_COMPILE", "0")
    eager = run()
    assert [u["block"] for u in compiled] == [u["block"] for u in eager]
    # The stem unit keeps its layout (3-channel input, too small for channels-last) and runs its output
    # quantizer compiled: the same run as eager, up to the order of the step gradient's sum.
    assert compiled[0]["loss_after"] == pytest.approx(eager[0]["loss_after"], rel=1e-3)
    # The block runs channels-last: its convolutions round differently in the last bits, which moves a few
    # 4-bit activation codes by one step, so the runs agree closely, not bit for bit.
    for c, e in zip(compiled, eager, strict=True):
        assert c["loss_before"] == pytest.approx(e["loss_before"], rel=0.05)
        assert c["loss_after"] == pytest.approx(e["loss_after"], rel=0.1, abs=1e-7)
