"""A third CNN this project's zoo does not have: MobileNetV2-style inverted residuals, some with SE.

The published case for block reconstruction at 4 bits is MobileNetV2 (MQBench W4A4: AdaRound 65.7,
QDrop 68.1): a depthwise convolution quantized on its own loses most, and the expand-depthwise-project
triple has to be rounded together. Here half the inverted-residual blocks have no skip connection (the
first of each stage changes width or stride), so the graph has a cut between their layers and only the
module tree says they are one block; the last stage carries squeeze-and-excitation (MobileNetV3's
MBConv). Written as a user would write one; quantbench takes it as ``holdout_mobile.py:build``.

Example:
    >>> import torch
    >>> build(num_classes=10, in_channels=1)(torch.randn(2, 1, 16, 16)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(s))))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, se: bool = False) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True)]
        if se:
            layers.append(_SqueezeExcite(hidden))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class HoldoutMobileNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        cfg = [(w, 1, 1, False), (3 * w // 2, 1, 6, False), (3 * w // 2, 1, 6, False), (2 * w, 2, 6, False),
               (2 * w, 1, 6, False), (4 * w, 2, 6, True), (4 * w, 1, 6, True)]  # (out, stride, expand, SE)
        blocks, cin = [], 2 * w
        for cout, stride, expand, se in cfg:
            blocks.append(_InvertedResidual(cin, cout, stride, expand, se))
            cin = cout
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU6(inplace=True),
            *blocks, nn.Conv2d(cin, 16 * w, 1, bias=False), nn.BatchNorm2d(16 * w), nn.ReLU6(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def build(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> HoldoutMobileNet:
    """The MobileNet-style hold-out CNN (the factory quantbench calls with the data's classes and channels)."""
    return HoldoutMobileNet(num_classes, in_channels, width)
