"""The real CIFAR-10 JPEG dev folder in ../shared (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import CIFAR_DEV
from quantbench.data import open_dataset, split_dataset

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.realdata
def test_cifar_dev_imagefolder(shared_dir: Path) -> None:
    ds = open_dataset(f"imagefolder:{CIFAR_DEV}")
    assert len(ds) == 5000 and ds.classes == CIFAR10_CLASSES
    assert np.bincount(ds.targets).tolist() == [500] * 10
    assert ds.input_shape == (3, 32, 32) and ds.in_memory
    assert ds.normalization["name"] == "imagenet"  # what the shared ResNet20 was trained with
    x, y = ds.tensors()
    assert x.shape == (5000, 3, 32, 32)
    parts = split_dataset(ds, {"calib": 0.1, "test": 0.9}, seed=0)
    assert np.bincount(parts["calib"].targets).tolist() == [50] * 10
