"""A small LeNet-style CNN for tiny inputs (the default experiment: scikit-learn's 8x8 digits).

It trains to >95% on ``digits`` in a few CPU epochs, so the whole quantization pipeline can
be exercised end to end in seconds. The global average pool makes it accept any input of
at least 2x2 (8x8 and larger is the intended range) and any number of channels.

Example:
    >>> net = lenet()
    >>> net(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from quantbench.models.zoo import MODELS

__all__ = ["LeNet", "lenet"]


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class LeNet(nn.Module):
    """conv3x3(16) -> conv3x3(32) -> maxpool 2 -> conv3x3(64) -> global pool -> linear.

    Every convolution is followed by BN and an ``nn.ReLU`` module, the pattern quantizers
    fold and fuse, so even this toy exercises BN folding and conv+ReLU fusion.

    Args:
        num_classes: Classifier outputs.
        in_channels: Input image channels.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.block1 = _conv_bn_relu(in_channels, 16)
        self.block2 = _conv_bn_relu(16, 32)
        self.pool = nn.MaxPool2d(2)
        self.block3 = _conv_bn_relu(32, 64)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block2(self.block1(x)))
        x = self.avgpool(self.block3(x))
        return self.fc(torch.flatten(x, 1))


@MODELS.register(
    "lenet",
    input_shape=(1, 8, 8),
    num_classes=10,
    family="lenet",
    description="Small LeNet-style CNN (3 conv+BN+ReLU, global pool) for 8x8 digits and up",
)
def lenet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """LeNet-style CNN: 24,058 parameters for 1 input channel and 10 classes."""
    return LeNet(num_classes, in_channels)
