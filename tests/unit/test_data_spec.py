"""Spec strings, the DATASETS registry and the built-in data sets (digits, synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantbench.data import DATASETS, ImageDataset, open_dataset, parse_spec, split_dataset
from quantbench.errors import QuantbenchError

EXPECTED_KINDS = {"digits", "synthetic", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder"}


def test_registry_lists_every_kind_with_metadata() -> None:
    assert EXPECTED_KINDS <= set(DATASETS.names())
    for name in DATASETS.names():
        meta = DATASETS.meta(name)
        assert isinstance(meta["needs_path"], bool)
        assert isinstance(meta["description"], str) and meta["description"] and "\n" not in meta["description"]
    assert DATASETS.meta("digits")["needs_path"] is False
    assert DATASETS.meta("mnist")["needs_path"] is True


@pytest.mark.parametrize(("spec", "expected"), [
    ("digits", ("digits", None)),
    ("synthetic:n=8", ("synthetic", "n=8")),
    ("mnist:/data/mnist", ("mnist", "/data/mnist")),
    ("imagefolder:C:/x:y", ("imagefolder", "C:/x:y")),
    ("  cifar10:dir  ", ("cifar10", "dir")),
])
def test_parse_spec(spec: str, expected: tuple[str, str | None]) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(("spec", "fragment"), [
    ("nope:x", "unknown data set kind 'nope'"),
    ("", "empty data set spec"),
    ("mnist", "needs a path"),
    ("cifar10:", "needs a path"),
    ("digits:/tmp", "takes no path"),
])
def test_parse_spec_errors(spec: str, fragment: str) -> None:
    with pytest.raises(QuantbenchError, match=fragment) as info:
        parse_spec(spec)
    assert "\n" not in str(info.value)


def test_unknown_kind_lists_known_kinds() -> None:
    with pytest.raises(QuantbenchError) as info:
        open_dataset("mnsit:/x")
    for kind in EXPECTED_KINDS:
        assert kind in str(info.value)


def test_digits_is_real_and_scaled() -> None:
    ds = open_dataset("digits", normalize="none")
    assert isinstance(ds, ImageDataset)
    assert len(ds) == 1797 and ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.classes == [str(i) for i in range(10)]
    assert ds.targets.dtype == np.int64 and ds.official_split is None
    x, y = ds.tensors()
    assert x.dtype == torch.float32 and x.shape == (1797, 1, 8, 8)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(y, torch.from_numpy(ds.targets))


def test_synthetic_options_and_determinism() -> None:
    a = open_dataset("synthetic:n=50,shape=1x12x10,classes=5,seed=3", normalize="none")
    b = open_dataset("synthetic:seed=3,classes=5,shape=1x12x10,n=50", normalize="none")
    c = open_dataset("synthetic:n=50,shape=1x12x10,classes=5,seed=4", normalize="none")
    assert len(a) == 50 and a.input_shape == (1, 12, 10) and a.num_classes == 5
    assert np.bincount(a.targets).tolist() == [10] * 5
    assert torch.equal(a.tensors()[0], b.tensors()[0])
    assert not torch.equal(a.tensors()[0], c.tensors()[0])
    x = a.tensors()[0]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    default = open_dataset("synthetic")
    assert len(default) == 256 and default.input_shape == (3, 16, 16) and default.num_classes == 10


@pytest.mark.parametrize(("options", "fragment"), [
    ("bogus=1", "expected KEY=VALUE"),
    ("n", "expected KEY=VALUE"),
    ("n=abc", "must be integers"),
    ("shape=3x16", "expected CxHxW"),
    ("classes=1", "classes >= 2"),
])
def test_synthetic_bad_options(options: str, fragment: str) -> None:
    with pytest.raises(QuantbenchError, match=fragment):
        open_dataset(f"synthetic:{options}")


def test_synthetic_is_learnable_by_a_tiny_cnn() -> None:
    ds = open_dataset("synthetic:n=480,shape=3x16x16,classes=10,seed=0")
    parts = split_dataset(ds, {"train": 0.75, "test": 0.25}, seed=0)
    xtr, ytr = parts["train"].tensors()
    xte, yte = parts["test"].tensors()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(15):
        for i in range(0, len(xtr), 60):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xtr[i:i + 60]), ytr[i:i + 60]).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model(xte).argmax(1) == yte).float().mean().item()
    assert accuracy > 0.5  # chance is 0.1


def test_docstring_examples_hold() -> None:
    import doctest

    import quantbench.data as data_pkg
    from quantbench.data import dataset, digits, spec, splits, synthetic, transforms

    for module in (data_pkg, dataset, digits, spec, splits, synthetic, transforms):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__


def test_a_bare_folder_is_an_image_folder_and_a_missing_one_is_named(tmp_path):
    from quantbench.data.spec import parse_spec

    assert parse_spec(str(tmp_path)) == ("imagefolder", str(tmp_path))
    with pytest.raises(QuantbenchError, match=r"data set folder '.*/nope' does not exist"):
        parse_spec(str(tmp_path / "nope"))
