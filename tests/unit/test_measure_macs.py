"""MAC counting (quantbench.measure.macs): FLOPs = 2 x MACs, conv/matmul only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.measure import count_macs, macs_vs_batch


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 0: 8x8x8 outputs, 3*3*3 MACs each
        nn.BatchNorm2d(8),  # 1: not counted
        nn.ReLU(),  # 2: not counted
        nn.MaxPool2d(2),  # 3: not counted -> 8x4x4
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2),  # 4: 16x2x2 outputs, (8/2)*3*3 MACs each
        nn.Flatten(),  # 5
        nn.Linear(64, 10),  # 6: 64*10, bias not counted
    )


# Hand computation for one 3x8x8 image.
CONV0 = (8 * 8 * 8) * (3 * 3 * 3)  # 13,824
CONV4 = (16 * 2 * 2) * (4 * 3 * 3)  # 2,304
FC6 = 64 * 10  # 640
TOTAL = CONV0 + CONV4 + FC6  # 16,768


def test_hand_computed_tiny_cnn() -> None:
    r = count_macs(tiny_cnn(), (3, 8, 8))
    assert r.macs == TOTAL
    assert r.per_image_macs == TOTAL
    assert r.flops == 2 * TOTAL
    assert r.batch_size == 1
    assert r.by_module == {"0": CONV0, "4": CONV4, "6": FC6}


def test_macs_scale_linearly_with_batch() -> None:
    model = tiny_cnn()
    one = count_macs(model, (3, 8, 8), batch_size=1)
    for b in (2, 5):
        rb = count_macs(model, (3, 8, 8), batch_size=b)
        assert rb.macs == b * one.macs
        assert rb.flops == 2 * rb.macs
        assert rb.per_image_macs == one.macs
        assert rb.by_module == {k: b * v for k, v in one.by_module.items()}


def test_macs_vs_batch_equals_real_counts() -> None:
    model = tiny_cnn()
    cheap = macs_vs_batch(model, (3, 8, 8), [1, 3, 8])
    assert [r.batch_size for r in cheap] == [1, 3, 8]
    for r in cheap:
        real = count_macs(model, (3, 8, 8), batch_size=r.batch_size)
        assert r.macs == real.macs
        assert r.by_module == real.by_module


class Nested(nn.Module):
    """Arithmetic at three levels: a child block, a grandchild, and the root's own F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU())
        self.head_w = nn.Parameter(torch.randn(3, 2 * 4 * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x).flatten(1)
        return F.linear(y, self.head_w)


def test_by_module_self_counts_sum_to_total() -> None:
    r = count_macs(Nested(), (1, 4, 4))
    conv = (2 * 4 * 4) * 1
    head = 32 * 3
    assert r.macs == conv + head
    assert r.by_module == {"block.0": conv, "": head}
    assert sum(r.by_module.values()) == r.macs


def test_mode_restored_and_shape_validated() -> None:
    model = tiny_cnn().train()
    count_macs(model, (3, 8, 8))
    assert model.training
    assert model[1].num_batches_tracked.item() == 0  # ran in eval mode: BN stats untouched
    with pytest.raises(QuantbenchError, match="input_shape"):
        count_macs(model, (8, 8))  # type: ignore[arg-type]
    with pytest.raises(QuantbenchError, match="batch_size"):
        count_macs(model, (3, 8, 8), batch_size=0)


def test_as_dict_states_convention() -> None:
    d = count_macs(nn.Linear(4, 2), (1, 1, 4)).as_dict()
    assert d["macs"] == 8 and d["flops"] == 16
    assert "FLOPs = 2 x MACs" in d["convention"]
