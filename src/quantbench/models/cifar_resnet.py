"""CIFAR ResNets (He et al. 2015, section 4.2): resnet20/32/44/56.

Layer names and shapes match akamaster/pytorch_resnet_cifar10 exactly, so its published
checkpoints (e.g. ``resnet20-12fca82f.th``) load with :func:`load_checkpoint`. Two changes
that do not touch the state dict make the network friendly to torch.fx quantization:
the option-A shortcut is a real module (:class:`PadShortcut`) instead of a ``LambdaLayer``,
and every ReLU is its own ``nn.ReLU`` module so a quantizer can see (and fuse) it.

Example:
    >>> net = resnet20()
    >>> sum(p.numel() for p in net.parameters())
    269722
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantbench.models.zoo import MODELS

__all__ = ["BasicBlock", "CifarResNet", "PadShortcut", "resnet20", "resnet32", "resnet44", "resnet56"]


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad channels (parameter-free).

    A named module rather than a lambda so the model pickles, prints and traces cleanly;
    the slicing and ``F.pad`` record as plain graph nodes under torch.fx.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with a residual ``+`` (identity or :class:`PadShortcut`)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 16/32/64 channels, global average pool, ``linear``.

    Args:
        num_blocks: Blocks per stage (n); depth = 6n + 2.
        num_classes: Classifier outputs.
        in_channels: Input image channels.
    """

    def __init__(self, num_blocks: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(16, num_blocks, stride=1)
        self.layer2 = self._make_layer(32, num_blocks, stride=2)
        self.layer3 = self._make_layer(64, num_blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    split_unit = "residual block"

    def split_blocks(self) -> list[str]:
        """Split points after each residual block (point 0: after the stem), as split-computing studies count."""
        return [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(len(getattr(self, f"layer{i}")))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.linear(x)


_META = {"input_shape": (3, 32, 32), "num_classes": 10, "family": "cifar-resnet"}
_DESC = "CIFAR ResNet-{} (He et al. 2015), akamaster/pytorch_resnet_cifar10 keys"


@MODELS.register("resnet20", description=_DESC.format(20), **_META)
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-20 (3 blocks per stage, 269,722 parameters at 10 classes)."""
    return CifarResNet(3, num_classes=num_classes, in_channels=in_channels)


@MODELS.register("resnet32", description=_DESC.format(32), **_META)
def resnet32(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-32 (5 blocks per stage)."""
    return CifarResNet(5, num_classes=num_classes, in_channels=in_channels)


@MODELS.register("resnet44", description=_DESC.format(44), **_META)
def resnet44(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-44 (7 blocks per stage)."""
    return CifarResNet(7, num_classes=num_classes, in_channels=in_channels)


@MODELS.register("resnet56", description=_DESC.format(56), **_META)
def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-56 (9 blocks per stage, 855,770 parameters at 10 classes)."""
    return CifarResNet(9, num_classes=num_classes, in_channels=in_channels)
