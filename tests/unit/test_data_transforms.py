"""Normalisation presets, resize, and bulk access equal to per-item access."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from quantbench.data import NORMALIZATIONS, open_dataset, split_dataset
from quantbench.data.fakes import write_image_folder
from quantbench.errors import QuantbenchError

SPEC = "synthetic:n=60,shape=3x8x8,classes=3,seed=1"


def test_preset_names_and_values() -> None:
    assert set(NORMALIZATIONS) == {"imagenet", "cifar", "none", "dataset", "auto"}
    assert NORMALIZATIONS["imagenet"].mean == (0.485, 0.456, 0.406)
    assert NORMALIZATIONS["imagenet"].std == (0.229, 0.224, 0.225)
    assert NORMALIZATIONS["cifar"].mean == (0.4914, 0.4822, 0.4465)
    assert NORMALIZATIONS["cifar"].std == (0.2470, 0.2435, 0.2616)


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(QuantbenchError, match="unknown normalisation 'imagnet'; expected one of: imagenet, cifar"):
        open_dataset("digits", normalize="imagnet")


@pytest.mark.parametrize("preset", ["imagenet", "cifar"])
def test_fixed_presets_apply_their_mean_and_std(preset: str) -> None:
    plain = open_dataset(SPEC, normalize="none").tensors()[0]
    ds = open_dataset(SPEC, normalize=preset)
    mean = torch.tensor(NORMALIZATIONS[preset].mean).view(1, 3, 1, 1)
    std = torch.tensor(NORMALIZATIONS[preset].std).view(1, 3, 1, 1)
    torch.testing.assert_close(ds.tensors()[0], (plain - mean) / std)
    assert ds.normalization == {"name": preset, "requested": preset,
                                "mean": list(NORMALIZATIONS[preset].mean), "std": list(NORMALIZATIONS[preset].std)}


def test_dataset_preset_gives_zero_mean_unit_std_per_channel() -> None:
    ds = open_dataset(SPEC, normalize="dataset")
    x = ds.tensors()[0].double()
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    again = open_dataset(SPEC, normalize="dataset")
    assert again.normalization == ds.normalization  # deterministic


def test_grey_data_uses_channel_mean_of_preset() -> None:
    ds = open_dataset("digits", normalize="imagenet")
    assert ds.normalization["mean"] == pytest.approx([np.mean([0.485, 0.456, 0.406])])
    assert ds.normalization["std"] == pytest.approx([np.mean([0.229, 0.224, 0.225])])


def test_auto_resolves_per_kind(tmp_path: Path) -> None:
    assert open_dataset("digits").normalization["name"] == "dataset"
    assert open_dataset(SPEC).normalization["name"] == "dataset"
    assert open_dataset(SPEC).normalization["requested"] == "auto"
    root = write_image_folder(tmp_path, ["a"], per_class=2, size=4)
    assert open_dataset(f"imagefolder:{root}").normalization["name"] == "imagenet"


def test_none_is_unit_range() -> None:
    x = open_dataset("digits", normalize="none").tensors()[0]
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_tensors_equal_per_item_access() -> None:
    ds = open_dataset(SPEC)
    x, y = ds.tensors()
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (60, 3, 8, 8)
    for i in (0, 17, 59):
        xi, yi = ds[i]
        assert isinstance(yi, int) and yi == int(y[i])
        torch.testing.assert_close(xi, x[i], rtol=0, atol=1e-6)
    batches = list(ds.batches(25))
    assert [len(b[1]) for b in batches] == [25, 25, 10]
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), x, rtol=0, atol=1e-6)


def test_views_tensors_equal_per_item_access() -> None:
    view = split_dataset(open_dataset(SPEC), {"a": 0.5}, seed=2)["a"]
    x, y = view.tensors()
    assert len(view) == 30 and x.shape == (30, 3, 8, 8)
    for i in (0, 29):
        torch.testing.assert_close(view[i][0], x[i], rtol=0, atol=1e-6)
        assert view[i][1] == int(y[i]) == int(view.targets[i])


def test_resize_in_memory_arrays() -> None:
    ds = open_dataset("digits", resize=16, normalize="none")
    assert ds.input_shape == (1, 16, 16)
    x, _ = ds.tensors()
    assert x.shape == (1797, 1, 16, 16) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    torch.testing.assert_close(ds[5][0], x[5], rtol=0, atol=1e-6)
    small = open_dataset("digits", resize=4, normalize="none").tensors()[0]
    assert small.shape == (1797, 1, 4, 4)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "32", (8,), (8, 0), 9000])
def test_bad_resize(bad: object) -> None:
    with pytest.raises(QuantbenchError, match="resize must be a side S or"):
        open_dataset("digits", resize=bad)  # type: ignore[arg-type]


def test_dataloader_compatible() -> None:
    loader = torch.utils.data.DataLoader(open_dataset(SPEC), batch_size=16)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 8, 8) and y.dtype == torch.int64


def test_index_out_of_range() -> None:
    ds = open_dataset(SPEC)
    with pytest.raises(IndexError):
        ds[60]
    torch.testing.assert_close(ds[-1][0], ds[59][0])
