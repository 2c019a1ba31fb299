"""imagefolder from tiny PNG/JPEG folders written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quantbench.data import imagefolder as imagefolder_module
from quantbench.data import open_dataset
from quantbench.data.fakes import fake_pixels, write_image_folder
from quantbench.errors import QuantbenchError


def test_png_folder_classes_order_and_exact_pixels(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, ["zebra", "ant", "moth"], per_class=4, size=(10, 6), fmt="png")
    (root / "ant" / "notes.txt").write_text("ignored")
    ds = open_dataset(f"imagefolder:{root}", normalize="none")
    assert ds.classes == ["ant", "moth", "zebra"]
    assert ds.targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len(ds) == 12 and ds.input_shape == (3, 6, 10) and ds.in_memory
    ant = fake_pixels(4, (6, 10, 3), np.full(4, 1), seed=1)  # "ant" was written second (seed 0 + 1)
    np.testing.assert_array_equal(ds.raw([0])[0].numpy(), ant[0].transpose(2, 0, 1))
    assert ds.normalization["name"] == "none"
    assert open_dataset(f"imagefolder:{root}").normalization["name"] == "imagenet"


def test_grey_jpegs_become_rgb(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, ["a", "b"], per_class=2, size=8, fmt="jpg", mode="L")
    ds = open_dataset(f"imagefolder:{root}")
    assert ds.input_shape == (3, 8, 8)
    raw = ds.raw([0])[0]
    assert torch.equal(raw[0], raw[1]) and torch.equal(raw[1], raw[2])


def test_resize_and_mixed_sizes(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "d", ["a"], per_class=2, size=8)
    write_image_folder(tmp_path / "d", ["b"], per_class=2, size=(12, 5))
    with pytest.raises(QuantbenchError, match=r"image .*b/0000.png' is 12x5 but earlier images are 8x8; pass "
                                              r"--input-shape"):
        open_dataset(f"imagefolder:{tmp_path / 'd'}")
    ds = open_dataset(f"imagefolder:{tmp_path / 'd'}", resize=16)
    assert ds.input_shape == (3, 16, 16) and ds[3][0].shape == (3, 16, 16)
    assert ds.tensors()[0].shape == (4, 3, 16, 16)
    wide = open_dataset(f"imagefolder:{tmp_path / 'd'}", resize=(6, 10))  # non-square: H x W
    assert wide.input_shape == (3, 6, 10) and wide.tensors()[0].shape == (4, 3, 6, 10)


def test_lazy_folder_matches_eager(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, ["a", "b", "c"], per_class=5, size=8, fmt="png")
    eager = open_dataset(f"imagefolder:{root}", in_memory=True)
    lazy = open_dataset(f"imagefolder:{root}", in_memory=False)
    assert eager.in_memory and not lazy.in_memory
    assert torch.equal(eager.tensors()[0], lazy.tensors()[0])
    assert torch.equal(eager[7][0], lazy[7][0]) and eager[7][1] == lazy[7][1]


def test_large_folder_goes_lazy_automatically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_image_folder(tmp_path, ["a", "b"], per_class=3, size=8)
    monkeypatch.setattr(imagefolder_module, "MAX_IN_MEMORY_BYTES", 5 * 3 * 8 * 8)
    assert not open_dataset(f"imagefolder:{root}").in_memory


def test_no_class_subfolders(tmp_path: Path) -> None:
    with pytest.raises(QuantbenchError, match="has no class subfolders"):
        open_dataset(f"imagefolder:{tmp_path}")
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(QuantbenchError, match="holds images directly"):
        open_dataset(f"imagefolder:{tmp_path}")


def test_class_folder_without_images(tmp_path: Path) -> None:
    write_image_folder(tmp_path, ["a"], per_class=2, size=4)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(QuantbenchError, match=r"class folder .*/b' has no images"):
        open_dataset(f"imagefolder:{tmp_path}")


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(QuantbenchError, match="does not exist"):
        open_dataset(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(QuantbenchError, match="is a file; expected a directory"):
        open_dataset(f"imagefolder:{tmp_path / 'f.png'}")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_named_at_open_time(tmp_path: Path, damage: str) -> None:
    root = write_image_folder(tmp_path, ["a", "b"], per_class=3, size=32, fmt="jpg")
    bad = root / "b" / "0001.jpg"
    bad.write_bytes(b"not an image" if damage == "garbage" else bad.read_bytes()[:300])
    with pytest.raises(QuantbenchError, match=r"cannot decode image .*b/0001.jpg") as info:
        open_dataset(f"imagefolder:{root}")
    assert "\n" not in str(info.value)


def test_corrupt_image_in_lazy_folder_is_named_on_access(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, ["a"], per_class=3, size=8)
    (root / "a" / "0002.png").write_bytes(b"broken")
    ds = open_dataset(f"imagefolder:{root}", in_memory=False)
    assert ds[0][0].shape == (3, 8, 8)
    with pytest.raises(QuantbenchError, match="0002.png"):
        ds[2]
