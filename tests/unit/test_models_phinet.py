"""PhiNet hyper-parameters change the network the way the paper says."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.models import build_model
from quantbench.models.phinet import PhiNetConvBlock, SEBlock, expansion_factor


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def blocks(model: nn.Module) -> list[PhiNetConvBlock]:
    return [m for m in model.modules() if isinstance(m, PhiNetConvBlock)]


def test_alpha_scales_width_and_params() -> None:
    small, base, big = (build_model("phinet", alpha=a) for a in (0.25, 0.5, 1.0))
    assert n_params(small) < n_params(base) < n_params(big)
    # Pointwise-dominated: doubling the width roughly quadruples the parameters.
    assert 2.5 < n_params(big) / n_params(base) < 4.5


def test_num_layers_adds_blocks() -> None:
    assert (
        len(blocks(build_model("phinet", num_layers=9)))
        == len(blocks(build_model("phinet", num_layers=7))) + 2
    )


def test_beta_and_t0_set_the_expansion() -> None:
    assert expansion_factor(6.0, 1.0, 3, 7) == pytest.approx(6.0)  # beta=1: constant t0
    assert expansion_factor(6.0, 2.0, 7, 7) == pytest.approx(12.0)  # last block: t0 * beta
    assert n_params(build_model("phinet", beta=2.0)) > n_params(build_model("phinet"))
    assert n_params(build_model("phinet", t0=3.0)) < n_params(build_model("phinet"))


def test_squeeze_excite_toggle() -> None:
    assert any(isinstance(m, SEBlock) for m in build_model("phinet").modules())
    assert not any(isinstance(m, SEBlock) for m in build_model("phinet", squeeze_excite=False).modules())


def test_h_swish_toggle() -> None:
    relu6_only = build_model("phinet", h_swish=False)
    assert not any(isinstance(m, nn.Hardswish) for m in relu6_only.modules())
    assert any(isinstance(m, nn.ReLU6) for m in relu6_only.modules())


def test_divisor_8_makes_every_channel_count_divisible_by_8() -> None:
    model = build_model("phinet", alpha=0.35, divisor=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1:]  # skip the 3-channel stem dw
    assert convs and all(c.out_channels % 8 == 0 for c in convs)
    original = build_model("phinet", alpha=0.35, divisor=1)
    assert any(c.out_channels % 8 for c in original.modules() if isinstance(c, nn.Conv2d))


def test_pad_layer_option() -> None:
    padded = build_model("phinet", pad_layer=True).eval()
    plain = build_model("phinet", pad_layer=False).eval()
    n_strided = sum(1 for b in blocks(padded) if any(getattr(m, "stride", (1,))[0] == 2 for m in b.modules()))
    n_pads = sum(isinstance(m, nn.ZeroPad2d) for m in padded.modules())
    assert n_pads == n_strided + 1  # every stride-2 depthwise conv + the stem
    assert not any(isinstance(m, nn.ZeroPad2d) for m in plain.modules())
    x = torch.randn(2, 3, 32, 32)
    assert padded(x).shape == plain(x).shape == (2, 10)
    # Without the pad layer the module tree is micromind's current one: keys independent of padding.
    assert [k for k in plain.state_dict() if "_layers.1." in k][:2] == [
        "_layers.1._layers.0.weight",
        "_layers.1._layers.1.weight",
    ]


@pytest.mark.parametrize("pad_layer", [True, False])
def test_traces_and_matches(pad_layer: bool) -> None:
    model = build_model("phinet", pad_layer=pad_layer, in_channels=1, num_classes=3).eval()
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))


def test_residual_only_where_shapes_match() -> None:
    for block in blocks(build_model("phinet")):
        if block.skip_conn:
            x = torch.randn(1, block._layers[0].in_channels, 8, 8)
            assert block.eval()(x).shape == x.shape


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_layers": 2}, "num_layers=2"),
        ({"divisor": 0}, "divisor=0"),
        ({"first_conv_stride": 3}, "first_conv_stride=3"),
        ({"downsampling_layers": [2]}, "downsampling_layers"),
        ({"t0": 0.0}, "t0=0.0"),
    ],
)
def test_invalid_values(kwargs: dict, match: str) -> None:
    with pytest.raises(QuantbenchError, match=match):
        build_model("phinet", **kwargs)
