"""split_dataset / subset: disjoint, complete, deterministic, stratified."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from quantbench.data import DatasetView, open_dataset, split_dataset, subset
from quantbench.errors import QuantbenchError

FRACTIONS = {"train": 0.7, "val": 0.1, "calib": 0.1, "test": 0.1}


@pytest.fixture(scope="module")
def digits():
    return open_dataset("digits")


def test_splits_are_disjoint_and_cover_everything_when_fractions_sum_to_one(digits) -> None:
    parts = split_dataset(digits, FRACTIONS, seed=0)
    assert list(parts) == list(FRACTIONS)
    all_idx = np.concatenate([p.indices for p in parts.values()])
    assert len(all_idx) == len(set(all_idx.tolist())) == len(digits)
    for name, part in parts.items():
        assert isinstance(part, DatasetView) and part.name == name
        assert abs(len(part) - FRACTIONS[name] * len(digits)) < 1


def test_partial_fractions_leave_the_rest_unused(digits) -> None:
    parts = split_dataset(digits, {"calib": 0.05, "test": 0.2}, seed=0)
    assert len(parts["calib"]) == int(0.05 * 1797) and len(parts["test"]) == int(0.2 * 1797)
    assert not set(parts["calib"].indices) & set(parts["test"].indices)


def test_stratified(digits) -> None:
    parts = split_dataset(digits, FRACTIONS, seed=0)
    overall = np.bincount(digits.targets, minlength=10) / len(digits)
    for part in parts.values():
        share = np.bincount(part.targets, minlength=10) / len(part)
        assert np.abs(share - overall).max() < 0.02
        counts = np.bincount(part.targets, minlength=10)
        expected = np.bincount(digits.targets, minlength=10) * len(part) / len(digits)
        assert np.abs(counts - expected).max() <= 1.0  # at most one item off per class


def test_deterministic_and_seed_dependent(digits) -> None:
    a = split_dataset(digits, FRACTIONS, seed=5)
    b = split_dataset(digits, FRACTIONS, seed=5)
    c = split_dataset(digits, FRACTIONS, seed=6)
    for name in FRACTIONS:
        np.testing.assert_array_equal(a[name].indices, b[name].indices)
    assert not np.array_equal(a["test"].indices, c["test"].indices)


def test_same_indices_in_another_process(digits) -> None:
    code = ("from quantbench.data import open_dataset, split_dataset;"
            "p = split_dataset(open_dataset('synthetic:n=100,classes=4'), {'a': .3, 'b': .2}, seed=9);"
            "print(p['a'].indices.tolist(), p['b'].indices.tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    here = split_dataset(open_dataset("synthetic:n=100,classes=4"), {"a": 0.3, "b": 0.2}, seed=9)
    assert out.strip() == f"{here['a'].indices.tolist()} {here['b'].indices.tolist()}"


def test_split_order_is_shuffled_not_class_sorted(digits) -> None:
    calib = split_dataset(digits, {"calib": 0.1}, seed=0)["calib"]
    assert len(set(calib.targets[:20].tolist())) > 3


def test_unstratified(digits) -> None:
    parts = split_dataset(digits, {"a": 0.5, "b": 0.5}, seed=0, stratify=False)
    assert len(parts["a"]) + len(parts["b"]) == len(digits)
    assert not set(parts["a"].indices) & set(parts["b"].indices)


@pytest.mark.parametrize(("fractions", "fragment"), [
    ({"a": 0.7, "b": 0.4}, "sum to 1.1 > 1"),
    ({"a": 0.0}, "must be a number in"),
    ({"a": -0.1}, "must be a number in"),
    ({"a": "half"}, "must be a number in"),
    ({}, "non-empty mapping"),
    ({"a": 0.0001}, "would be empty"),
    ({"test": "official"}, "has no official splits"),
])
def test_bad_fractions(digits, fractions: dict, fragment: str) -> None:
    with pytest.raises(QuantbenchError, match=fragment):
        split_dataset(digits, fractions)


def test_views_expose_the_dataset_interface(digits) -> None:
    view = split_dataset(digits, {"train": 0.5}, seed=0)["train"]
    assert view.classes == digits.classes and view.num_classes == 10
    assert view.input_shape == (1, 8, 8) and view.spec == "digits"
    assert view.normalization == digits.normalization and view.official_split is None
    np.testing.assert_array_equal(view.targets, digits.targets[view.indices])
    assert view.describe()["split"] == "train"


def test_split_of_a_view_indexes_the_base_dataset(digits) -> None:
    train = split_dataset(digits, {"train": 0.5}, seed=0)["train"]
    inner = split_dataset(train, {"x": 0.5, "y": 0.5}, seed=1)
    assert inner["x"].dataset is digits
    assert set(inner["x"].indices) | set(inner["y"].indices) == set(train.indices)


def test_subset_is_stratified_deterministic_and_inside_its_source(digits) -> None:
    train = split_dataset(digits, {"train": 0.7}, seed=0)["train"]
    calib = subset(train, 100, seed=3)
    assert len(calib) == 100 and set(calib.indices) <= set(train.indices)
    assert np.bincount(calib.targets, minlength=10).min() >= 9
    np.testing.assert_array_equal(calib.indices, subset(train, 100, seed=3).indices)
    assert len(set(calib.indices.tolist())) == 100


def test_subset_errors(digits) -> None:
    with pytest.raises(QuantbenchError, match="asked for a subset of 2000 items but 'digits' has only 1797"):
        subset(digits, 2000)
    with pytest.raises(QuantbenchError, match="positive integer"):
        subset(digits, 0)
    assert len(subset(digits, 1797)) == 1797


def test_official_split_name_must_exist(tmp_path) -> None:
    from quantbench.data.fakes import write_mnist

    ds = open_dataset(f"mnist:{write_mnist(tmp_path, n_train=20, n_test=10, size=8)}")
    with pytest.raises(QuantbenchError, match="no official split of that name; official splits: test, train"):
        split_dataset(ds, {"val": "official"})
    both = split_dataset(ds, {"train": "official", "test": "official"})
    assert len(both["train"]) == 20 and len(both["test"]) == 10
