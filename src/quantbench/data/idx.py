"""``mnist:DIR`` and ``fashion-mnist:DIR``: the official idx files, raw or gzipped.

Both official splits are loaded and concatenated (train first, then test), because the
10,000 test images alone are too few to train on; ``ds.official_split`` says which
split each item came from, and ``split_dataset(ds, {..., "test": "official"})`` keeps
the official test set. Files are looked up in DIR and DIR/raw, under the official names
(``train-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` ...), with or without ``.gz``
(the ``train-images.idx3-ubyte`` spelling of some mirrors is accepted too).

Example:
    >>> ds = open_dataset("mnist:~/data/mnist")  # doctest: +SKIP
    >>> ds.input_shape, sorted(set(ds.official_split))  # doctest: +SKIP
    ((1, 28, 28), ['test', 'train'])
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from quantbench.data.spec import DATASETS, LoadOptions, Source, require_dir
from quantbench.errors import QuantbenchError

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
UBYTE = 0x08


MAX_IDX_BYTES = 2 << 30  # the largest official file (EMNIST/KMNIST-49 train images) is well under this


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read(MAX_IDX_BYTES + 1)  # bounded: a small .gz can inflate without end
        else:
            if path.stat().st_size > MAX_IDX_BYTES:
                raise QuantbenchError(f"idx file {str(path)!r} is larger than {MAX_IDX_BYTES:,} bytes")
            data = path.read_bytes()
        if len(data) > MAX_IDX_BYTES:
            raise QuantbenchError(f"idx file {str(path)!r} inflates to more than {MAX_IDX_BYTES:,} bytes")
        return data
    except (OSError, EOFError, zlib.error) as exc:
        raise QuantbenchError(f"cannot read idx file {str(path)!r}: {exc}") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte idx file with ``ndim`` dimensions, checking its header.

    The idx header is: two zero bytes, a type code (0x08 = unsigned byte), the number of
    dimensions, then one big-endian uint32 per dimension; the data follow.

    Raises:
        QuantbenchError: Wrong magic number, or a file shorter/longer than its header says.
    """
    data = _read_bytes(path)
    expected_magic = (UBYTE << 8) | ndim
    if len(data) < 4:
        raise QuantbenchError(f"idx file {str(path)!r} is truncated: {len(data)} bytes, not even a header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise QuantbenchError(f"idx file {str(path)!r} has magic number 0x{magic:08x}, expected "
                              f"0x{expected_magic:08x} (unsigned-byte, {ndim}-d); is it the right file?")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise QuantbenchError(f"idx file {str(path)!r} is truncated: {len(data)} bytes, header needs {header}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    size = math.prod(dims)  # Python ints: a forged header cannot overflow the check
    found = len(data) - header
    if found != size:
        what = "truncated" if found < size else "longer than its header says"
        raise QuantbenchError(f"idx file {str(path)!r} is {what}: header says {'x'.join(map(str, dims))} = "
                              f"{size} bytes of data, file has {found}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str, kind: str) -> Path:
    """Locate ``stem`` (e.g. 'train-images-idx3-ubyte') in root or root/raw, .gz or not."""
    prefix, _, idx = stem.rpartition("-idx")
    names = [stem, f"{prefix}.idx{idx}"]
    for folder in (root, root / "raw"):
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    raise QuantbenchError(f"{kind}: missing {stem}[.gz] in {str(root)!r} (expected the official idx files "
                          "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                          "t10k-labels-idx1-ubyte, raw or .gz)")


def _load_split(root: Path, prefix: str, kind: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    image_file = _find(root, f"{prefix}-images-idx3-ubyte", kind)
    label_file = _find(root, f"{prefix}-labels-idx1-ubyte", kind)
    images = read_idx(image_file, 3)
    labels = read_idx(label_file, 1)
    if len(images) != len(labels):
        raise QuantbenchError(f"{kind}: {str(label_file)!r} has {len(labels)} labels but {str(image_file)!r} "
                              f"has {len(images)} images")
    if len(labels) and int(labels.max()) >= num_classes:
        raise QuantbenchError(f"{kind}: {str(label_file)!r} has label {int(labels.max())}, expected 0..{num_classes - 1}")
    return images, labels


def load_idx_dataset(path: str | None, kind: str, classes: list[str]) -> Source:
    """Load both official splits of an MNIST-style data set from the idx files in ``path``."""
    assert path is not None
    root = require_dir(path, kind)
    train_x, train_y = _load_split(root, "train", kind, len(classes))
    test_x, test_y = _load_split(root, "t10k", kind, len(classes))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise QuantbenchError(f"{kind}: train images are {train_x.shape[1]}x{train_x.shape[2]} but test images "
                              f"are {test_x.shape[1]}x{test_x.shape[2]} in {str(root)!r}")
    images = torch.from_numpy(np.concatenate([train_x, test_x])).unsqueeze(1).contiguous()
    split = np.array(["train"] * len(train_y) + ["test"] * len(test_y))
    _, h, w = train_x.shape
    return Source(classes=list(classes), targets=np.concatenate([train_y, test_y]).astype(np.int64),
                  shape=(1, h, w), images=images, official_split=split)


@DATASETS.register("mnist", needs_path=True, accepts_path=True, auto_normalization="dataset",
                   description="MNIST from the official idx files in DIR (raw or .gz): 70,000 28x28 grey "
                               "digits, official train/test kept in ds.official_split")
def load_mnist(path: str | None, options: LoadOptions) -> Source:
    """Load MNIST (train + test) from ``path``."""
    return load_idx_dataset(path, "mnist", MNIST_CLASSES)


@DATASETS.register("fashion-mnist", needs_path=True, accepts_path=True, auto_normalization="dataset",
                   description="Fashion-MNIST from the official idx files in DIR (raw or .gz): 70,000 28x28 "
                               "grey clothing images, 10 classes, official train/test kept")
def load_fashion_mnist(path: str | None, options: LoadOptions) -> Source:
    """Load Fashion-MNIST (train + test) from ``path``."""
    return load_idx_dataset(path, "fashion-mnist", FASHION_CLASSES)
