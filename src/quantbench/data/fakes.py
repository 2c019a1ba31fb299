"""Writers of tiny data sets in the official on-disk layouts, for tests and examples.

Tests of any module can build an MNIST idx folder, CIFAR pickles or an image folder in a
temporary directory in milliseconds, instead of depending on downloads. Pixel values
are deterministic and class-dependent, so loaded data can be checked exactly.

Example:
    >>> root = write_image_folder(tmp_path / "imgs", ["cat", "dog"], per_class=3)  # doctest: +SKIP
    >>> open_dataset(f"imagefolder:{root}").classes  # doctest: +SKIP
    ['cat', 'dog']
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def fake_pixels(n: int, shape: tuple[int, ...], labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint8 images whose mean brightness grows with the label, plus seeded noise."""
    rng = np.random.default_rng(seed)
    base = (40 + 20 * labels.astype(np.int64)).reshape(-1, *([1] * len(shape)))
    return np.clip(base + rng.integers(-30, 31, size=(n, *shape)), 0, 255).astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an idx file (gzipped when ``path`` ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_mnist(root: Path, n_train: int = 30, n_test: int = 10, size: int = 28, gz: bool = False,
                seed: int = 0) -> Path:
    """Write the four official MNIST idx files (labels cycle 0..9) into ``root``."""
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", fake_pixels(n, (size, size), labels, seed))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        seed += 1
    return root


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 10, seed: int = 0) -> Path:
    """Write a CIFAR-10 ``cifar-10-batches-py`` folder (5 train batches + test) at ``root``."""
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(root / "batches.meta", {b"label_names": [n.encode() for n in names], b"num_vis": 3072})
    for k, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        labels = (np.arange(per_batch) + k) % 10
        data = fake_pixels(per_batch, (3072,), labels, seed + k)
        _dump(root / name, {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]})
    return root


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """Write a CIFAR-100 ``cifar-100-python`` folder (train, test, meta) at ``root``."""
    _dump(root / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                          b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    for k, (name, n) in enumerate((("train", n_train), ("test", n_test))):
        fine = np.arange(n) % 100
        _dump(root / name, {b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(),
                            b"data": fake_pixels(n, (3072,), fine % 10, seed + k)})
    return root


def write_image_folder(root: Path, classes: Sequence[str] = ("a", "b"), per_class: int = 3,
                       size: int | tuple[int, int] = 8, fmt: str = "png", mode: str = "RGB",
                       seed: int = 0) -> Path:
    """Write ``root/<class>/NNNN.<fmt>`` images (size = side or (width, height))."""
    w, h = (size, size) if isinstance(size, int) else size
    channels = {"RGB": 3, "L": 1}[mode]
    for c, name in enumerate(classes):
        labels = np.full(per_class, c)
        pixels = fake_pixels(per_class, (h, w, channels), labels, seed + c)
        for i in range(per_class):
            (root / name).mkdir(parents=True, exist_ok=True)
            arr = pixels[i] if channels == 3 else pixels[i, :, :, 0]
            Image.fromarray(arr).save(root / name / f"{i:04d}.{fmt}")
    return root
