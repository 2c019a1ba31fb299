"""``cifar10:DIR``, ``cifar100:DIR``, ``cifar100-coarse:DIR``: the official python pickles.

DIR is the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder or its parent.
Both official splits are loaded (train first) and ``ds.official_split`` records them.

``cifar10:DIR:test`` loads only the official test batch (10,000 images) and ``cifar10:DIR:train``
only the training batches (50,000), for every CIFAR kind: ``quantbench eval --data cifar10:DIR:test``
scores exactly the test set a paper reports, and ``--train-data cifar10:DIR:train`` trains on the rest.
The suffix is read from the END of the path, after the last ``:``, and only when the whole string is
not itself an existing folder - so folders whose names contain colons still work, and a
misspelled split (``:tset``) is an error naming the two choices rather than a missing folder.
CIFAR-100 uses the 100 fine labels; the ``cifar100-coarse`` kind uses the 20 superclasses
(a separate kind rather than an option, so a spec string says everything).

The batches are pickles, and unpickling runs code named in the file, so a restricted
unpickler admits only what the official files contain (numpy arrays, plain containers).

Example:
    >>> ds = open_dataset("cifar10:~/data/cifar-10-batches-py")  # doctest: +SKIP
    >>> len(ds), ds.classes[:2]  # doctest: +SKIP
    (60000, ['airplane', 'automobile'])
    >>> split_suffix("~/data/cifar-10-batches-py:test", "cifar10")
    ('~/data/cifar-10-batches-py', 'test')
"""

from __future__ import annotations

import codecs
import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantbench.data.spec import DATASETS, LoadOptions, Source, require_dir
from quantbench.errors import QuantbenchError

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
SPLITS = ("train", "test")
MAX_BATCH_BYTES = 512 << 20  # official batches are ~31 MB (CIFAR-10) and ~155 MB (CIFAR-100 train)


def _multiarray() -> Any:
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray()._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray()._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray().scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray().scalar,
    ("_codecs", "encode"): codecs.encode,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_batch(path: Path) -> dict[bytes, Any]:
    """Unpickle one CIFAR batch/meta file (bytes keys, as written by Python 2)."""
    if not path.is_file():
        raise QuantbenchError(f"missing CIFAR batch file {str(path)!r}")
    if path.stat().st_size > MAX_BATCH_BYTES:
        raise QuantbenchError(f"CIFAR batch file {str(path)!r} has {path.stat().st_size:,} bytes; an official batch "
                              f"has about 31 MB (at most {MAX_BATCH_BYTES:,} accepted)")
    try:
        with path.open("rb") as f:
            obj = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - the restricted unpickler runs no code; any failure is a bad file
        raise QuantbenchError(f"CIFAR batch file {str(path)!r} is truncated or not a CIFAR python pickle "
                              f"({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise QuantbenchError(f"CIFAR batch file {str(path)!r} holds a {type(obj).__name__}, expected a dict")
    return obj


def _field(batch: dict[bytes, Any], key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise QuantbenchError(f"CIFAR batch file {str(path)!r} has no {key!r} entry")


def _images_labels(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = read_batch(path)
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, label_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise QuantbenchError(f"CIFAR batch file {str(path)!r}: data is {data.dtype} {data.shape}, "
                              "expected uint8 N x 3072")
    if len(labels) != len(data):
        raise QuantbenchError(f"CIFAR batch file {str(path)!r} has {len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise QuantbenchError(f"CIFAR batch file {str(path)!r} has labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _names(meta_path: Path, key: str) -> list[str]:
    names = _field(read_batch(meta_path), key, meta_path)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def split_suffix(path: str, kind: str) -> tuple[str, str | None]:
    """``DIR[:train|:test]`` -> (DIR, split or None); see the module docstring for the rules.

    Args:
        path: the spec's path part (everything after ``KIND:``).
        kind: the data set kind, for the error message.

    Returns:
        The folder and the official split asked for (None: both).

    Raises:
        QuantbenchError: a suffix after the last ``:`` that is neither ``train`` nor ``test``.

    Example:
        >>> split_suffix("/data/c10", "cifar10")
        ('/data/c10', None)
    """
    head, sep, tail = path.rpartition(":")
    if not sep or Path(path).expanduser().is_dir() or "/" in tail or "\\" in tail or not head:
        return path, None  # no suffix (or "C:" of a Windows drive, or a colon inside a folder name)
    name = tail.strip().lower()
    if name not in SPLITS:
        raise QuantbenchError(f"{kind}: unknown official split {tail.strip()!r} in {kind}:{path}; "
                              f"write {kind}:DIR:train or {kind}:DIR:test (or {kind}:DIR for both)")
    return head, name


def _root(path: str | None, kind: str, folder: str) -> tuple[Path, str | None]:
    assert path is not None
    path, split = split_suffix(path, kind)
    root = require_dir(path, kind)
    return (root / folder if (root / folder).is_dir() else root), split


def _assemble(classes: list[str], parts: list[tuple[str, np.ndarray, np.ndarray]]) -> Source:
    images = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    targets = np.concatenate([p[2] for p in parts])
    split = np.concatenate([np.full(len(p[2]), p[0]) for p in parts])
    return Source(classes=classes, targets=targets, shape=(3, 32, 32), images=images, official_split=split)


@DATASETS.register("cifar10", needs_path=True, accepts_path=True, auto_normalization="cifar",
                   description="CIFAR-10 python pickles (cifar-10-batches-py) in DIR: 60,000 32x32 colour "
                               "images, 10 classes, official train/test kept; DIR:test or DIR:train for one")
def load_cifar10(path: str | None, options: LoadOptions) -> Source:
    """Load CIFAR-10 (data_batch_1..5 then test_batch; ``:train`` / ``:test`` one of them) from ``path``."""
    root, only = _root(path, "cifar10", CIFAR10_DIR)
    classes = _names(root / "batches.meta", "label_names")
    parts = []
    for name in [*CIFAR10_TRAIN, "test_batch"]:
        split = "test" if name == "test_batch" else "train"
        if only in (None, split):
            parts.append((split, *_images_labels(root / name, "labels", len(classes))))
    return _assemble(classes, parts)


def _load_cifar100(path: str | None, kind: str, level: str) -> Source:
    root, only = _root(path, kind, CIFAR100_DIR)
    classes = _names(root / "meta", f"{level}_label_names")
    parts = [(name, *_images_labels(root / name, f"{level}_labels", len(classes))) for name in SPLITS
             if only in (None, name)]
    return _assemble(classes, parts)


@DATASETS.register("cifar100", needs_path=True, accepts_path=True, auto_normalization="cifar",
                   description="CIFAR-100 python pickles (cifar-100-python) in DIR: 60,000 32x32 colour "
                               "images, 100 fine classes, official train/test kept; DIR:test or DIR:train for one")
def load_cifar100(path: str | None, options: LoadOptions) -> Source:
    """Load CIFAR-100 with its 100 fine labels from ``path``."""
    return _load_cifar100(path, "cifar100", "fine")


@DATASETS.register("cifar100-coarse", needs_path=True, accepts_path=True, auto_normalization="cifar",
                   description="CIFAR-100 python pickles in DIR with the 20 coarse superclass labels")
def load_cifar100_coarse(path: str | None, options: LoadOptions) -> Source:
    """Load CIFAR-100 with its 20 coarse (superclass) labels from ``path``."""
    return _load_cifar100(path, "cifar100-coarse", "coarse")
