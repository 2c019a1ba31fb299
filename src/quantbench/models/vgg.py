"""VGG (Simonyan & Zisserman 2015): ImageNet layout with torchvision keys, plus CIFAR variants.

Two different networks are both called "VGG16 on CIFAR-10" in the literature, and their
sizes differ fourfold, so the zoo carries both:

* ``vgg16`` etc.: torchvision layout (``features.N``, ``avgpool`` = AdaptiveAvgPool2d(7),
  ``classifier`` 25088->4096->4096->classes). With a 10-class head it has 134,301,514
  parameters — the model of the published CIFAR-10 PTQ study.
* ``vgg16_cifar`` etc.: BN convolutions, global pool to 512, head 512->4096->4096->classes:
  33,646,666 parameters at 10 classes.

Example:
    >>> sum(p.numel() for p in vgg16_cifar().parameters())
    33646666
"""

from __future__ import annotations

import torch
from torch import nn

from quantbench.models.zoo import MODELS

__all__ = ["VGG", "make_features", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "vgg11_cifar", "vgg16_cifar"]

# Channel plans ("M" = 2x2 max pool), named as in the paper's table 1.
CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def make_features(cfg: list[int | str], in_channels: int, batch_norm: bool) -> nn.Sequential:
    """Build the convolutional trunk with torchvision's ``features.N`` indexing."""
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        assert isinstance(v, int)
        layers.append(nn.Conv2d(c, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU())
        c = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG trunk + pooled 3-layer MLP head (``classifier.0``, ``.3``, ``.6`` carry weights).

    Args:
        features: The convolutional trunk (see :func:`make_features`).
        pool_size: Side of the adaptive average pool: 7 (ImageNet layout) or 1 (CIFAR).
        num_classes: Classifier outputs.
        dropout: Dropout probability inside the head.
    """

    def __init__(self, features: nn.Sequential, pool_size: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(512 * pool_size * pool_size, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    split_unit = "stage"
    split_stem = "input"  # VGG has no stem: point 0 sends the input itself

    def split_blocks(self) -> list[str]:
        """Split points after each stage (a stage ends with its max-pool)."""
        ends = [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        last = f"features.{len(self.features) - 1}"
        return ends if ends and ends[-1] == last else [*ends, last]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


_IMAGENET = {"input_shape": (3, 224, 224), "num_classes": 1000, "family": "vgg"}
_CIFAR = {"input_shape": (3, 32, 32), "num_classes": 10, "family": "vgg-cifar"}


@MODELS.register("vgg11", description="VGG-11 (torchvision layout/keys)", **_IMAGENET)
def vgg11(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """VGG-11 (config A) without BN: 132,863,336 parameters at 1000 classes."""
    return VGG(make_features(CFGS["A"], in_channels, False), 7, num_classes)


@MODELS.register("vgg11_bn", description="VGG-11 with BatchNorm (torchvision layout/keys)", **_IMAGENET)
def vgg11_bn(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """VGG-11 (config A) with BN after every convolution."""
    return VGG(make_features(CFGS["A"], in_channels, True), 7, num_classes)


@MODELS.register("vgg16", description="VGG-16 (torchvision layout/keys)", **_IMAGENET)
def vgg16(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """VGG-16 (config D): 138,357,544 parameters at 1000 classes, 134,301,514 at 10."""
    return VGG(make_features(CFGS["D"], in_channels, False), 7, num_classes)


@MODELS.register("vgg16_bn", description="VGG-16 with BatchNorm (torchvision layout/keys)", **_IMAGENET)
def vgg16_bn(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """VGG-16 (config D) with BN after every convolution."""
    return VGG(make_features(CFGS["D"], in_channels, True), 7, num_classes)


@MODELS.register("vgg11_cifar", description="CIFAR VGG-11 (BN, 512->4096->4096 head)", **_CIFAR)
def vgg11_cifar(num_classes: int = 10, in_channels: int = 3, *, bn: bool = True) -> nn.Module:
    """CIFAR-style VGG-11: global pool to 512 features, then 512->4096->4096->classes.

    Args:
        num_classes: Classifier outputs.
        in_channels: Input image channels.
        bn: BatchNorm after every convolution (the usual CIFAR recipe; VGG trains poorly without).
    """
    return VGG(make_features(CFGS["A"], in_channels, bn), 1, num_classes)


@MODELS.register("vgg16_cifar", description="CIFAR VGG-16 (BN, 512->4096->4096 head)", **_CIFAR)
def vgg16_cifar(num_classes: int = 10, in_channels: int = 3, *, bn: bool = True) -> nn.Module:
    """CIFAR-style VGG-16: 33,646,666 parameters at 10 classes with BN.

    Args:
        num_classes: Classifier outputs.
        in_channels: Input image channels.
        bn: BatchNorm after every convolution (the usual CIFAR recipe; VGG trains poorly without).
    """
    return VGG(make_features(CFGS["D"], in_channels, bn), 1, num_classes)
