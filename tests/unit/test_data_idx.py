"""mnist / fashion-mnist from tiny fake idx files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantbench.data import open_dataset, split_dataset
from quantbench.data.fakes import fake_pixels, write_idx, write_mnist
from quantbench.errors import QuantbenchError


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loads_both_official_splits(tmp_path: Path, gz: bool) -> None:
    root = write_mnist(tmp_path, n_train=30, n_test=10, size=28, gz=gz)
    ds = open_dataset(f"mnist:{root}", normalize="none")
    assert len(ds) == 40 and ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.classes == [str(i) for i in range(10)]
    assert ds.official_split.tolist() == ["train"] * 30 + ["test"] * 10
    assert ds.targets.tolist() == [i % 10 for i in range(30)] + [i % 10 for i in range(10)]
    expected = fake_pixels(30, (28, 28), np.arange(30) % 10, seed=0)
    np.testing.assert_array_equal(ds.raw(range(30))[:, 0].numpy(), expected)
    x, _ = ds[0]
    np.testing.assert_allclose(x[0].numpy(), expected[0] / 255.0, atol=1e-6)


def test_fashion_mnist_class_names_and_raw_subfolder(tmp_path: Path) -> None:
    write_mnist(tmp_path / "raw", n_train=20, n_test=10, size=8)
    ds = open_dataset(f"fashion-mnist:{tmp_path}")
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.input_shape == (1, 8, 8)


def test_mnist_official_split_is_honoured(tmp_path: Path) -> None:
    root = write_mnist(tmp_path, n_train=40, n_test=20, size=8)
    ds = open_dataset(f"mnist:{root}")
    parts = split_dataset(ds, {"train": 0.75, "calib": 0.25, "test": "official"}, seed=1)
    assert set(ds.official_split[parts["test"].indices]) == {"test"} and len(parts["test"]) == 20
    assert set(ds.official_split[parts["train"].indices]) == {"train"}
    assert len(parts["train"]) == 30 and len(parts["calib"]) == 10
    assert parts["test"].official_split.tolist() == ["test"] * 20


def test_missing_path_and_file_path(tmp_path: Path) -> None:
    with pytest.raises(QuantbenchError, match="does not exist"):
        open_dataset(f"mnist:{tmp_path / 'nope'}")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(QuantbenchError, match="is a file; expected a directory"):
        open_dataset(f"mnist:{f}")


def test_missing_idx_file_is_named(tmp_path: Path) -> None:
    root = write_mnist(tmp_path, n_train=10, n_test=10, size=8)
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(QuantbenchError, match="missing t10k-labels-idx1-ubyte"):
        open_dataset(f"mnist:{root}")


def test_wrong_magic_number(tmp_path: Path) -> None:
    root = write_mnist(tmp_path, n_train=10, n_test=10, size=8)
    # A labels file where an images file is expected: magic 0x801 instead of 0x803.
    write_idx(root / "train-images-idx3-ubyte", np.zeros(10, dtype=np.uint8))
    with pytest.raises(QuantbenchError, match=r"train-images-idx3-ubyte.*magic number 0x00000801, expected 0x00000803"):
        open_dataset(f"mnist:{root}")


@pytest.mark.parametrize("cut", [2, 10, 100])
def test_truncated_idx(tmp_path: Path, cut: int) -> None:
    root = write_mnist(tmp_path, n_train=10, n_test=10, size=8)
    path = root / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(QuantbenchError, match=r"t10k-images-idx3-ubyte.*truncated") as info:
        open_dataset(f"mnist:{root}")
    assert "\n" not in str(info.value)


def test_corrupt_gzip(tmp_path: Path) -> None:
    root = write_mnist(tmp_path, n_train=10, n_test=10, size=8, gz=True)
    path = root / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(QuantbenchError, match=r"train-labels-idx1-ubyte\.gz"):
        open_dataset(f"mnist:{root}")


def test_label_image_count_mismatch(tmp_path: Path) -> None:
    root = write_mnist(tmp_path, n_train=10, n_test=10, size=8)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(9, dtype=np.uint8))
    with pytest.raises(QuantbenchError, match="has 9 labels but .*train-images-idx3-ubyte.* has 10 images"):
        open_dataset(f"mnist:{root}")


def test_dotted_file_names_of_some_mirrors(tmp_path: Path) -> None:
    labels = (np.arange(10) % 10).astype(np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images.idx3-ubyte", fake_pixels(10, (8, 8), labels))
        write_idx(tmp_path / f"{prefix}-labels.idx1-ubyte", labels)
    assert len(open_dataset(f"mnist:{tmp_path}")) == 20
