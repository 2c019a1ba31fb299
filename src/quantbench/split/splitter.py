"""Cut a zoo network into an edge part and a cloud part: ``cloud(edge(x)) == model(x)`` exactly.

Split points, counted globally:

* ResNets (CIFAR and ImageNet layouts): after residual block N, across stages (ResNet-20 has
  3 x 3 = 9 blocks, ResNet-101 3+4+23+3 = 33); N = 0 is right after the stem.
* VGG: after stage N (a stage ends with its max-pool), 1..5.
* MobileNetV2 and PhiNet: after feature block N.

Both parts are ``nn.Sequential`` of the model's own modules (shared, not copied), running the
same operations in the same order as the model's ``forward``, so the composition is bitwise
equal to the whole model in FP32 - tested for every splittable model in the registry.

Example:
    >>> sp = split_model(build_model("resnet20"), after=3)  # doctest: +SKIP
    >>> torch.equal(sp.cloud(sp.edge(x)), model(x))  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from quantbench.errors import QuantbenchError

__all__ = ["SplitModel", "block_names", "num_split_points", "split_model"]


class _Head(nn.Module):
    """``classifier(flatten(pool(x)))`` - the models' own head, as their forward runs it."""

    def __init__(self, pool: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(x), 1))


def _blocks(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], nn.Module, str]:
    """(stem, blocks..., as named modules), the head, and what a split point counts."""
    from quantbench.models.cifar_resnet import CifarResNet
    from quantbench.models.mobilenet import MobileNetV2
    from quantbench.models.phinet import PhiNet
    from quantbench.models.resnet import ResNet
    from quantbench.models.vgg import VGG

    if isinstance(model, CifarResNet):
        stem = ("stem", nn.Sequential(model.conv1, model.bn1, model.relu))
        blocks = [(f"layer{i}.{j}", b) for i in (1, 2, 3) for j, b in enumerate(getattr(model, f"layer{i}"))]
        return [stem, *blocks], _Head(model.avgpool, model.linear), "residual block"
    if isinstance(model, ResNet):
        stem = ("stem", nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool))
        blocks = [(f"layer{i}.{j}", b) for i in (1, 2, 3, 4) for j, b in enumerate(getattr(model, f"layer{i}"))]
        return [stem, *blocks], _Head(model.avgpool, model.fc), "residual block"
    if isinstance(model, VGG):
        stages: list[tuple[str, nn.Module]] = [("stem", nn.Identity())]
        current: list[nn.Module] = []
        for m in model.features:
            current.append(m)
            if isinstance(m, nn.MaxPool2d):
                stages.append((f"stage{len(stages)}", nn.Sequential(*current)))
                current = []
        if current:
            stages.append((f"stage{len(stages)}", nn.Sequential(*current)))
        return stages, _Head(model.avgpool, model.classifier), "stage"
    if isinstance(model, MobileNetV2):
        feats = list(model.features)
        return ([("stem", feats[0])] + [(f"features.{i}", m) for i, m in enumerate(feats[1:], 1)],
                _Head(model.avgpool, model.classifier), "feature block")
    if isinstance(model, PhiNet):
        layers = list(model._layers)
        return ([("stem", layers[0])] + [(f"_layers.{i}", m) for i, m in enumerate(layers[1:], 1)],
                model.classifier, "feature block")
    raise QuantbenchError(f"model {type(model).__name__} cannot be split: splitting supports the zoo's ResNets, "
                          "VGGs, MobileNetV2 and PhiNet")


def num_split_points(model: nn.Module) -> int:
    """The largest N (split after block N); N = 0 is after the stem."""
    return len(_blocks(model)[0]) - 1


def block_names(model: nn.Module) -> list[str]:
    """Names of the stem and of every block, in order (index N = split after it)."""
    return [n for n, _ in _blocks(model)[0]]


@dataclass
class SplitModel:
    """An edge/cloud pair and where it was cut."""

    edge: nn.Sequential
    cloud: nn.Sequential
    after: int
    after_name: str
    unit: str


def split_model(model: nn.Module, after: int) -> SplitModel:
    """Cut ``model`` after block ``after`` (0 = after the stem; see the module docstring).

    Raises:
        QuantbenchError: a model that cannot be split, or ``after`` out of range (naming the range).
    """
    blocks, head, unit = _blocks(model)
    last = len(blocks) - 1
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= last:
        raise QuantbenchError(f"split: {type(model).__name__} can be split after {unit} 0..{last} "
                              f"(0 = after the stem), got {after!r}")
    edge = nn.Sequential(*(m for _, m in blocks[: after + 1]))
    cloud = nn.Sequential(*(m for _, m in blocks[after + 1:]), head)
    return SplitModel(edge.eval() if not model.training else edge, cloud.eval() if not model.training else cloud,
                      after, blocks[after][0], unit)
