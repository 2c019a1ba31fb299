"""A CNN this project's zoo does not have, for checking claims on a model nobody tuned for.

Shapes no zoo model combines: a grouped 3x3 stem, channel shuffle, a dense (concatenating) block,
squeeze-and-excitation with hard-sigmoid, hard-swish activations, average pooling and a two-layer
head. It is written as a user would write one; quantbench takes it as ``holdout_cnn.py:build``.

Example:
    >>> import torch
    >>> build(num_classes=10, in_channels=1)(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn


class _SE(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class HoldoutCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 24) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.Hardswish())
        self.group = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=4, bias=False),
                                   nn.BatchNorm2d(width), nn.Hardswish())
        self.dense = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU())
        self.se = _SE(3 * width)
        self.down = nn.Sequential(nn.Conv2d(3 * width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width, 64), nn.Hardswish(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        b = self.group(a)
        n, c, h, w = b.shape
        b = b.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        d = self.dense(torch.cat([a, b], 1))
        y = self.se(torch.cat([a, b, d], 1))
        return self.head(self.pool(self.down(y)))


def build(num_classes: int = 10, in_channels: int = 1, width: int = 24) -> HoldoutCNN:
    """The hold-out CNN (the factory quantbench calls with the data's classes and channels)."""
    return HoldoutCNN(num_classes, in_channels, width)
