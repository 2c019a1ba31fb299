"""MobileNetV2 (Sandler et al. 2018) with torchvision's state-dict keys.

Keys match torchvision (``features.0.0``, ``features.1.conv.0.0``, ..., ``classifier.1``) so
its checkpoints load. Depthwise convolutions are a known weak spot for per-tensor INT8
quantization (wide per-channel weight ranges) and for eager PyTorch speed, which is why
this model is in the zoo.

Example:
    >>> sum(p.numel() for p in mobilenet_v2().parameters())
    3504872
"""

from __future__ import annotations

import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.models.zoo import MODELS

__all__ = ["ConvBNAct", "InvertedResidual", "MobileNetV2", "make_divisible", "mobilenet_v2"]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` without dropping more than 10%.

    Channel counts divisible by 8 map well onto SIMD lanes and INT8 kernels.
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BN -> ReLU6, indexed 0/1/2 like torchvision's Conv2dNormActivation."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), residual ``+`` when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, kernel_size=1))
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ``use_res_connect`` is fixed at construction, so torch.fx records one branch only.
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 backbone + dropout/linear head.

    Args:
        num_classes: Classifier outputs.
        in_channels: Input image channels.
        width_mult: Channel multiplier (rounded to multiples of ``round_nearest``).
        round_nearest: Channel divisor.
        dropout: Dropout before the classifier.
    """

    # t (expansion), c (channels), n (repeats), s (first stride)
    SETTINGS = [
        [1, 16, 1, 1],
        [6, 24, 2, 2],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        input_channel = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvBNAct(in_channels, input_channel, stride=2)]
        for t, c, n, s in self.SETTINGS:
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNAct(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    split_unit = "feature block"

    def split_blocks(self) -> list[str]:
        """Split points after each feature block (point 0: after the stem, ``features.0``)."""
        return [f"features.{i}" for i in range(1, len(self.features))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@MODELS.register(
    "mobilenet_v2",
    input_shape=(3, 224, 224),
    num_classes=1000,
    family="mobilenet",
    description="MobileNetV2 (torchvision layout/keys), width_mult scales channels",
)
def mobilenet_v2(
    num_classes: int = 1000, in_channels: int = 3, *, width_mult: float = 1.0, dropout: float = 0.2
) -> nn.Module:
    """MobileNetV2: 3,504,872 parameters at 1000 classes and ``width_mult=1.0``.

    Args:
        num_classes: Classifier outputs.
        in_channels: Input image channels.
        width_mult: Channel multiplier (0.35, 0.5, 0.75, 1.0, 1.4 are the published points).
        dropout: Dropout before the classifier.
    """
    if not width_mult > 0:
        raise QuantbenchError(f"model 'mobilenet_v2': width_mult={width_mult!r}; expected a number > 0")
    if not 0.0 <= dropout < 1.0:
        raise QuantbenchError(f"model 'mobilenet_v2': dropout={dropout!r}; expected 0 <= dropout < 1")
    return MobileNetV2(num_classes, in_channels, width_mult=width_mult, dropout=dropout)
