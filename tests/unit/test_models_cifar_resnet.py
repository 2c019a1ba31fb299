"""CIFAR ResNets: akamaster layout, option-A shortcut, and the real pretrained checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quantbench.models import build_model, load_checkpoint
from quantbench.models.cifar_resnet import PadShortcut


@pytest.mark.parametrize(
    ("name", "blocks"), [("resnet20", 3), ("resnet32", 5), ("resnet44", 7), ("resnet56", 9)]
)
def test_depth(name: str, blocks: int) -> None:
    model = build_model(name)
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [blocks] * 3
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == 6 * blocks + 2  # + the linear layer = the name's depth


def test_akamaster_state_dict_keys() -> None:
    sd = build_model("resnet20").state_dict()
    weights = [k for k in sd if not k.endswith("num_batches_tracked")]
    assert weights[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                           "layer1.0.conv1.weight"]  # fmt: skip
    assert "layer3.2.bn2.running_var" in sd and weights[-2:] == ["linear.weight", "linear.bias"]
    assert len(weights) == 97  # as many as the checkpoint: no shortcut parameters
    assert not any("shortcut" in k for k in sd)


def test_pad_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(8)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert (y[:, :8] == 0).all() and (y[:, 24:] == 0).all()


MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _dev_batch(root: Path, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).glob("*.jpg"))[:per_class]:
            arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
            images.append((arr - MEAN) / STD)
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels)


@pytest.mark.realdata
def test_pretrained_resnet20_checkpoint_loads_and_classifies(shared_dir: Path) -> None:
    """``{'state_dict', 'best_prec1'}`` with ``module.`` keys and no num_batches_tracked loads strictly.

    ~81% is expected on the JPEG dev set; 30 images per class is enough to catch a wrong
    architecture (chance is 10%).
    """
    model = load_checkpoint(build_model("resnet20"), shared_dir / "weights" / "resnet20-12fca82f.th").eval()
    x, labels = _dev_batch(shared_dir / "datasets" / "cifar10-jpeg" / "dev", per_class=30)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.7
