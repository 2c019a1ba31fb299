"""PhiNets (Paissan et al. 2022): a scalable backbone for low-power AI at the edge.

Follows the reference implementation (micromind ``networks/phinet.py``): a padded separable
stem, then inverted-residual blocks whose expansion factor moves linearly from ``t0`` to
``t0 * beta`` across ``num_layers`` blocks, with width ``alpha``. Module names reproduce
micromind's (``_layers.N._layers.M``, ``classifier.2``), so with ``pad_layer=False`` its
classification checkpoints have the same keys.

Options the original exposes that matter for quantization:

* ``divisor``: round every channel count to a multiple of it (8 is the quantization- and
  SIMD-friendly choice); ``divisor=1`` keeps the paper's exact widths.
* ``pad_layer``: the Keras port pads *before* each stride-2 depthwise convolution with an
  explicit asymmetric ``nn.ZeroPad2d`` (TensorFlow "same" padding: nothing left/top, one
  pixel right/bottom for even sizes) and then runs a "valid" convolution. That separate pad
  op cannot be folded into the convolution by every backend, which the linter flags;
  ``pad_layer=False`` uses the convolution's own symmetric padding instead.
* ``squeeze_excite`` and ``h_swish``: both off gives the "compatibility" network
  (ReLU6 only, no sigmoid gating) that integer-only micro-controllers run.

Deviation: BatchNorm uses PyTorch's default momentum (0.1). micromind copies Keras's
``momentum=0.999`` literally, which in PyTorch means "running stats = the last batch" — a
port slip that makes evaluation-mode BN (and therefore BN folding before quantization) noisy.
``eps=1e-3`` is kept.

Example:
    >>> net = phinet(alpha=0.5, num_layers=7)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.models.mobilenet import make_divisible
from quantbench.models.zoo import MODELS

__all__ = ["PhiNet", "PhiNetConvBlock", "SEBlock", "SeparableConv2d", "expansion_factor", "phinet"]

_BN_EPS = 1e-3


def expansion_factor(t0: float, beta: float, block_id: int, num_blocks: int) -> float:
    """Expansion of block ``block_id``: linear from ``t0`` (first) to ``t0 * beta`` (last)."""
    return (t0 * beta) * block_id / num_blocks + t0 * (num_blocks - block_id) / num_blocks


def same_pad(kernel_size: int) -> tuple[int, int, int, int]:
    """TensorFlow "same" padding for a stride-2 conv on an even-sized input (l, r, t, b)."""
    return (kernel_size // 2 - 1, kernel_size // 2, kernel_size // 2 - 1, kernel_size // 2)


def _activation(h_swish: bool) -> nn.Module:
    # A fresh module per use: shared modules hide from Module.children() and share observers.
    return nn.Hardswish() if h_swish else nn.ReLU6()


class SEBlock(nn.Module):
    """Squeeze-and-excite: global pool -> 1x1 reduce -> act -> 1x1 expand -> sigmoid gate."""

    def __init__(self, in_channels: int, reduced: int, h_swish: bool = True) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.se_conv = nn.Conv2d(in_channels, reduced, kernel_size=1, bias=False)
        self.se_conv2 = nn.Conv2d(reduced, in_channels, kernel_size=1, bias=False)
        self.activation = _activation(h_swish)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.gate(self.se_conv2(self.activation(self.se_conv(self.pool(x)))))
        return x * w


class SeparableConv2d(nn.Module):
    """Stem: depthwise 3x3 (stride) -> pointwise 1x1 -> BN -> activation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, padding: int, h_swish: bool) -> None:
        super().__init__()
        self._layers = nn.ModuleList(
            [
                nn.Conv2d(in_channels, in_channels, 3, stride, padding, groups=in_channels, bias=False),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels, eps=_BN_EPS),
                _activation(h_swish),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._layers:
            x = layer(x)
        return x


class PhiNetConvBlock(nn.Module):
    """Inverted residual: [1x1 expand] -> [pad] -> dropout -> depthwise -> [SE] -> 1x1 project.

    Args:
        in_channels: Input channels.
        expansion: Expansion factor (used only when ``expand`` is true).
        stride: 1 or 2 (depthwise stride).
        filters: Output channels.
        has_se: Add a squeeze-and-excite block after the depthwise convolution.
        expand: Add the 1x1 expansion (the first block has none).
        res: Residual ``+`` when input and output shapes match.
        h_swish: Hardswish activations, else ReLU6.
        divisor: Channel divisor.
        pad_layer: Explicit ZeroPad2d + "valid" conv for stride 2 (see module docstring).
        dp_rate: Dropout2d probability before the depthwise convolution.
    """

    def __init__(
        self,
        in_channels: int,
        expansion: float,
        stride: int,
        filters: int,
        has_se: bool,
        expand: bool = True,
        res: bool = True,
        h_swish: bool = True,
        divisor: int = 1,
        pad_layer: bool = True,
        dp_rate: float = 0.05,
        k_size: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dw_channels = in_channels
        if expand:
            dw_channels = make_divisible(int(expansion * in_channels), divisor=divisor)
            layers += [
                nn.Conv2d(in_channels, dw_channels, 1, bias=False),
                nn.BatchNorm2d(dw_channels, eps=_BN_EPS),
                _activation(h_swish),
            ]
        dw_padding = k_size // 2
        if stride == 2 and pad_layer:
            layers.append(nn.ZeroPad2d(same_pad(k_size)))
            dw_padding = 0
        layers += [
            nn.Dropout2d(dp_rate),
            nn.Conv2d(dw_channels, dw_channels, k_size, stride, dw_padding, groups=dw_channels, bias=False),
            nn.BatchNorm2d(dw_channels, eps=_BN_EPS),
            _activation(h_swish),
        ]
        if has_se:
            reduced = make_divisible(max(1, int(dw_channels / 6)), divisor=divisor)
            layers.append(SEBlock(dw_channels, reduced, h_swish=h_swish))
        layers += [
            nn.Conv2d(dw_channels, filters, 1, bias=False),
            nn.BatchNorm2d(filters, eps=_BN_EPS),
        ]
        self._layers = nn.ModuleList(layers)
        self.skip_conn = bool(res and in_channels == filters and stride == 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x
        for layer in self._layers:
            x = layer(x)
        # ``skip_conn`` is fixed at construction, so torch.fx records one branch only.
        if self.skip_conn:
            x = x + inp
        return x


class PhiNet(nn.Module):
    """PhiNet classifier (always with its pooled linear head).

    Args:
        num_classes: Classifier outputs.
        in_channels: Input image channels.
        alpha: Width multiplier.
        beta: Shape factor: the last block expands by ``t0 * beta``.
        t0: Base expansion factor.
        num_layers: Number of convolutional blocks (>= 3; blocks 1-3 are fixed).
        squeeze_excite: Squeeze-and-excite in the expanding blocks.
        h_swish: Hardswish activations, else ReLU6.
        residuals: Residual connections where shapes allow.
        divisor: Round channel counts to multiples of this (1 = the paper's widths).
        pad_layer: Explicit ZeroPad2d before stride-2 depthwise convolutions (as the original).
        downsampling_layers: Block ids (>= 4) that halve resolution and double width;
            ids beyond ``num_layers`` have no effect.
        first_conv_stride: Stride of the stem (2 as the original; 1 keeps more resolution
            for tiny inputs).
    """

    FIRST_CONV_FILTERS = 48
    B1_FILTERS = 24
    B2_FILTERS = 48

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        alpha: float = 0.5,
        beta: float = 1.0,
        t0: float = 6.0,
        num_layers: int = 7,
        squeeze_excite: bool = True,
        h_swish: bool = True,
        residuals: bool = True,
        divisor: int = 1,
        pad_layer: bool = True,
        downsampling_layers: tuple[int, ...] = (5, 7),
        first_conv_stride: int = 2,
    ) -> None:
        super().__init__()

        def width(filters: int) -> int:
            return make_divisible(int(filters * alpha), divisor=divisor)

        common = {"res": residuals, "h_swish": h_swish, "divisor": divisor, "pad_layer": pad_layer}
        # Slot 0 is the stem pad (an Identity when unused) so that indices, and therefore
        # state-dict keys, do not depend on ``pad_layer``.
        layers: list[nn.Module] = [nn.Identity()]
        stem_padding = 1
        if first_conv_stride == 2 and pad_layer:
            layers[0] = nn.ZeroPad2d(same_pad(3))
            stem_padding = 0
        c_stem, c_b1, c_b2 = width(self.FIRST_CONV_FILTERS), width(self.B1_FILTERS), width(self.B2_FILTERS)
        layers.append(SeparableConv2d(in_channels, c_stem, first_conv_stride, stem_padding, h_swish))
        layers.append(PhiNetConvBlock(c_stem, 1.0, 1, c_b1, has_se=False, expand=False, **common))

        def xf(block_id: int) -> float:
            return expansion_factor(t0, beta, block_id, num_layers)

        layers.append(PhiNetConvBlock(c_b1, xf(1), 2, c_b1, squeeze_excite, **common))
        layers.append(PhiNetConvBlock(c_b1, xf(2), 1, c_b1, squeeze_excite, **common))
        layers.append(PhiNetConvBlock(c_b1, xf(3), 2, c_b2, squeeze_excite, **common))

        block_filters, cin = self.B2_FILTERS, c_b2
        for block_id in range(4, num_layers + 1):
            down = block_id in downsampling_layers
            if down:
                block_filters *= 2
            cout = width(block_filters)
            layers.append(
                PhiNetConvBlock(cin, xf(block_id), 2 if down else 1, cout, squeeze_excite, **common)
            )
            cin = cout

        self._layers = nn.ModuleList(layers)
        self.num_features = cin
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(cin, num_classes)
        )

    split_unit = "feature block"

    def split_blocks(self) -> list[str]:
        """Split points after each feature block (point 0: after the stem, ``_layers.0``)."""
        return [f"_layers.{i}" for i in range(1, len(self._layers))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._layers:
            x = layer(x)
        return self.classifier(x)


def _fail(key: str, value: object, expected: str) -> QuantbenchError:
    return QuantbenchError(f"model 'phinet': {key}={value!r}; expected {expected}")


@MODELS.register(
    "phinet",
    input_shape=(3, 32, 32),
    num_classes=10,
    family="phinet",
    description="PhiNet (Paissan et al. 2022) scalable edge backbone; alpha/beta/t0/num_layers",
)
def phinet(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    alpha: float = 0.5,
    beta: float = 1.0,
    t0: float = 6.0,
    num_layers: int = 7,
    squeeze_excite: bool = True,
    h_swish: bool = True,
    residuals: bool = True,
    divisor: int = 1,
    pad_layer: bool = True,
    downsampling_layers: tuple[int, ...] = (5, 7),
    first_conv_stride: int = 2,
) -> nn.Module:
    """Build a PhiNet; see :class:`PhiNet` for the hyper-parameters.

    Raises:
        QuantbenchError: A hyper-parameter outside its valid range.
    """
    for key, value in (("alpha", alpha), ("beta", beta), ("t0", t0)):
        if not value > 0:
            raise _fail(key, value, "a number > 0")
    if num_layers < 3:
        raise _fail("num_layers", num_layers, "an integer >= 3 (blocks 1-3 are fixed)")
    if divisor < 1:
        raise _fail("divisor", divisor, "an integer >= 1")
    if first_conv_stride not in (1, 2):
        raise _fail("first_conv_stride", first_conv_stride, "1 or 2")
    if any(i < 4 for i in downsampling_layers):
        raise _fail("downsampling_layers", list(downsampling_layers), "block ids >= 4")
    return PhiNet(
        num_classes,
        in_channels,
        alpha=alpha,
        beta=beta,
        t0=t0,
        num_layers=num_layers,
        squeeze_excite=squeeze_excite,
        h_swish=h_swish,
        residuals=residuals,
        divisor=divisor,
        pad_layer=pad_layer,
        downsampling_layers=tuple(downsampling_layers),
        first_conv_stride=first_conv_stride,
    )
