"""Data sets named by spec strings ``KIND[:PATH]``, normalised and split reproducibly.

Kinds: ``digits``, ``synthetic``, ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``,
``cifar100-coarse``, ``imagefolder`` (see ``DATASETS.names()`` and each entry's
``description``). Nothing here downloads: files must already be on disk.

Example:
    >>> from quantbench.data import open_dataset, split_dataset
    >>> ds = open_dataset("digits")
    >>> parts = split_dataset(ds, {"train": .7, "val": .1, "calib": .1, "test": .1}, seed=0)
    >>> x, y = parts["test"].tensors()
"""

from __future__ import annotations

# Loader modules register themselves in DATASETS on import.
from quantbench.data import cifar, digits, idx, imagefolder, synthetic  # noqa: F401
from quantbench.data.dataset import ImageDataset, open_dataset
from quantbench.data.spec import DATASETS, LoadOptions, Source, parse_spec
from quantbench.data.splits import DatasetView, split_dataset, subset
from quantbench.data.transforms import NORMALIZATIONS, Normalization

__all__ = [
    "DATASETS",
    "NORMALIZATIONS",
    "DatasetView",
    "ImageDataset",
    "LoadOptions",
    "Normalization",
    "Source",
    "open_dataset",
    "parse_spec",
    "split_dataset",
    "subset",
]
