"""ImageNet ResNets (He et al. 2016): resnet18/34/50/101 with torchvision's state-dict keys.

The module tree reproduces torchvision's names and shapes (``conv1``, ``bn1``,
``layerN.i.convK``/``bnK``, ``downsample.0``/``.1``, ``fc``) so torchvision checkpoints load
with :func:`load_checkpoint` — without importing torchvision. Deviations that leave the
state dict unchanged: each ReLU is its own non-inplace ``nn.ReLU`` module (torchvision
reuses one inplace module per block, which makes a quantizer share observers between
different tensors) and the residual is a plain ``out + identity``.

Example:
    >>> net = resnet18()
    >>> sum(p.numel() for p in net.parameters())
    11689512
"""

from __future__ import annotations

import torch
from torch import nn

from quantbench.models.zoo import MODELS

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision's "ResNet V1.5"), 1x1 expand x4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        width = planes
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class ResNet(nn.Module):
    """ImageNet ResNet trunk: 7x7/2 stem, 3x3/2 max pool, four stages, global pool, ``fc``.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: Blocks per stage, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        num_classes: Classifier outputs.
        in_channels: Input image channels.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    split_unit = "residual block"

    def split_blocks(self) -> list[str]:
        """Split points after each residual block (point 0: after the stem and its max-pool)."""
        return [f"layer{i}.{j}" for i in (1, 2, 3, 4) for j in range(len(getattr(self, f"layer{i}")))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


_META = {"input_shape": (3, 224, 224), "num_classes": 1000, "family": "resnet"}


@MODELS.register("resnet18", description="ResNet-18 (ImageNet layout, torchvision keys)", **_META)
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """ResNet-18: 11,689,512 parameters at 1000 classes."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


@MODELS.register("resnet34", description="ResNet-34 (ImageNet layout, torchvision keys)", **_META)
def resnet34(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """ResNet-34: 21,797,672 parameters at 1000 classes."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels)


@MODELS.register("resnet50", description="ResNet-50 V1.5 (ImageNet layout, torchvision keys)", **_META)
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """ResNet-50: 25,557,032 parameters at 1000 classes."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


@MODELS.register("resnet101", description="ResNet-101 V1.5 (ImageNet layout, torchvision keys)", **_META)
def resnet101(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """ResNet-101: 44,549,160 parameters at 1000 classes (~7.8 GMACs at 224x224)."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, in_channels)
