"""A second CNN this project's zoo does not have: bottleneck residual blocks with projection shortcuts.

Where ``holdout_cnn.py`` checks odd operators (grouped convolution, concatenation, squeeze-and-excitation),
this one checks the shape most user CNNs share with ImageNet ResNets and none of the zoo's CIFAR models
has: 1x1-3x3-1x1 bottlenecks whose shortcut is a strided 1x1 convolution when the shape changes (so a
reconstruction unit holds four quantized layers on two branches), ReLU6 in the stem and a dropout head.
Written as a user would write one; quantbench takes it as ``holdout_bottleneck.py:build``.

Example:
    >>> import torch
    >>> build(num_classes=10, in_channels=1)(torch.randn(2, 1, 16, 16)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.spatial = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.expand(self.spatial(self.reduce(x))) + self.shortcut(x))


class HoldoutBottleneckNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w),
                                  nn.ReLU6())
        self.stages = nn.Sequential(
            _Bottleneck(2 * w, w, 4 * w, 1), _Bottleneck(4 * w, w, 4 * w, 1),
            _Bottleneck(4 * w, 2 * w, 8 * w, 2), _Bottleneck(8 * w, 2 * w, 8 * w, 1),
            _Bottleneck(8 * w, 4 * w, 16 * w, 2), _Bottleneck(16 * w, 4 * w, 16 * w, 1),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1),
                                  nn.Linear(16 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def build(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> HoldoutBottleneckNet:
    """The bottleneck hold-out CNN (the factory quantbench calls with the data's classes and channels)."""
    return HoldoutBottleneckNet(num_classes, in_channels, width)
