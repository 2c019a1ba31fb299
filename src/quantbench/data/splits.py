"""Deterministic, disjoint, stratified splits (train/val/calib/test) and subsets.

Quantization results are only comparable when every run sees the same images: the
calibration set must not overlap the test set, and the FP32 and quantized models must
be scored on identical items. So splits depend only on (labels, fractions, seed), use a
private ``numpy.random.Generator`` (never global RNG state), and are identical across
processes and runs.

Official splits (MNIST, CIFAR) are honoured explicitly: a fraction given as the string
``"official"`` takes that official split as is, and the numeric fractions then divide
the items of the *other* official splits. ``{"train": .9, "calib": .1, "test": "official"}``
on ``mnist:DIR`` keeps the official 10,000 test images as test and splits the official
60,000 training images 90/10.

Example:
    >>> from quantbench.data import open_dataset
    >>> parts = split_dataset(open_dataset("digits"), {"train": .8, "test": .2}, seed=0)
    >>> len(parts["train"]), len(parts["test"])
    (1438, 359)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from quantbench.data.dataset import ImageDataset
from quantbench.errors import QuantbenchError


class DatasetView(Dataset):
    """A subset of an :class:`ImageDataset` with the same interface (like torch's Subset,
    plus ``targets``, ``classes``, ``tensors()`` ...).

    Views of views are flattened: ``dataset`` is always the underlying ImageDataset and
    ``indices`` index into it.

    Attributes:
        dataset: The underlying ImageDataset.
        indices: int64 positions in ``dataset``.
        name: Split name ('train', 'calib', ...) or None.
        targets: Labels of the view's items.
    """

    def __init__(self, dataset: ImageDataset | DatasetView, indices: Sequence[int] | np.ndarray,
                 name: str | None = None) -> None:
        base, base_idx = _base(dataset)
        self.dataset = base
        self.indices = base_idx[np.asarray(indices, dtype=np.int64)]
        self.name = name
        self.targets = base.targets[self.indices]

    spec = property(lambda self: self.dataset.spec, doc="Spec of the underlying data set.")
    classes = property(lambda self: self.dataset.classes, doc="Class names.")
    input_shape = property(lambda self: self.dataset.input_shape, doc="(C, H, W) of an item.")
    num_classes = property(lambda self: self.dataset.num_classes, doc="Number of classes.")
    normalization = property(lambda self: self.dataset.normalization, doc="Normalisation applied.")
    resize = property(lambda self: self.dataset.resize, doc="Requested (H, W) or None.")

    @property
    def official_split(self) -> np.ndarray | None:
        """Official split names of the view's items, or None."""
        off = self.dataset.official_split
        return None if off is None else off[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[int(self.indices[index])]

    def batches(self, batch_size: int = 256, *, normalized: bool = True
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` batches in view order; see :meth:`ImageDataset.batches`."""
        return self.dataset.batches(batch_size, self.indices, normalized=normalized)

    def tensors(self, *, normalized: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """All items of the view at once; see :meth:`ImageDataset.tensors`."""
        return self.dataset.tensors(self.indices, normalized=normalized)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary to store with results."""
        return {**self.dataset.describe(), "split": self.name, "items": len(self)}

    def __repr__(self) -> str:
        return f"DatasetView(name={self.name!r}, items={len(self)}, of={self.dataset!r})"


AnyDataset = ImageDataset | DatasetView


def _base(ds: AnyDataset) -> tuple[ImageDataset, np.ndarray]:
    if isinstance(ds, DatasetView):
        return ds.dataset, ds.indices
    if isinstance(ds, ImageDataset):
        return ds, np.arange(len(ds), dtype=np.int64)
    raise TypeError(f"expected an ImageDataset or DatasetView, got {type(ds).__name__}")


def _stratified_counts(labels: np.ndarray, totals: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Integer items per (class, split): proportional to class size, exact split totals."""
    classes, sizes = np.unique(labels, return_counts=True)
    n = len(labels)
    exact = sizes[:, None] * np.asarray(totals, dtype=np.float64)[None, :] / n
    alloc = np.floor(exact + 1e-9).astype(np.int64)
    spare = sizes - alloc.sum(axis=1)
    for s, total in enumerate(totals):
        need = total - int(alloc[:, s].sum())
        order = np.argsort(-(exact[:, s] - alloc[:, s]), kind="stable")
        while need > 0:  # largest remainder first; a second lap only if capacity ran short
            if not spare.any():
                raise AssertionError("split totals exceed the items available")
            for c in order:
                if need and spare[c] > 0:
                    alloc[c, s] += 1
                    spare[c] -= 1
                    need -= 1
    return classes, alloc


def _allocate(labels: np.ndarray, totals: list[int], rng: np.random.Generator,
              stratify: bool) -> list[np.ndarray]:
    """Positions (into ``labels``) for each split: disjoint, shuffled, of the given sizes."""
    parts: list[list[np.ndarray]] = [[] for _ in totals]
    if stratify:
        classes, alloc = _stratified_counts(labels, totals)
        for c, cls in enumerate(classes):
            members = rng.permutation(np.flatnonzero(labels == cls))
            bounds = np.concatenate([[0], np.cumsum(alloc[c])])
            for s in range(len(totals)):
                parts[s].append(members[bounds[s]:bounds[s + 1]])
    else:
        perm = rng.permutation(len(labels))
        bounds = np.concatenate([[0], np.cumsum(totals)])
        for s in range(len(totals)):
            parts[s].append(perm[bounds[s]:bounds[s + 1]])
    # Shuffle within each split so that taking its first k items is not class-ordered.
    return [rng.permutation(np.concatenate(p).astype(np.int64)) for p in parts]


def _totals(fractions: list[float], n: int) -> list[int]:
    exact = [f * n for f in fractions]
    totals = [math.floor(e + 1e-9) for e in exact]
    if abs(sum(fractions) - 1.0) <= 1e-9:  # everything is asked for: use every item
        for s in sorted(range(len(exact)), key=lambda s: totals[s] - exact[s])[: n - sum(totals)]:
            totals[s] += 1
    return totals


def split_dataset(ds: AnyDataset, fractions: Mapping[str, float | str], seed: int = 0,
                  stratify: bool = True) -> dict[str, DatasetView]:
    """Split ``ds`` into disjoint named parts, stratified by class.

    Args:
        ds: An ImageDataset or DatasetView.
        fractions: Split name -> fraction of the items (positive, summing to at most 1; when
            they sum to 1 every item is used), or the string ``"official"`` to take the
            data set's official split of that name (see the module docstring).
        seed: Same seed, same labels, same fractions -> same indices, in any process.
        stratify: Keep class proportions in every split (largest-remainder rounding).

    Returns:
        Split name -> :class:`DatasetView`, in the order of ``fractions``. Items within a
        split are in a seeded random order.

    Raises:
        QuantbenchError: Bad fractions, a split that would be empty, or "official" on a data
            set without official splits.

    Example:
        >>> parts = split_dataset(ds, {"train": .7, "val": .1, "calib": .1, "test": .1})  # doctest: +SKIP
    """
    if not isinstance(fractions, Mapping) or not fractions:
        raise QuantbenchError(f"split fractions must be a non-empty mapping name -> fraction, got {fractions!r}")
    base, pool = _base(ds)
    result: dict[str, np.ndarray] = {}
    official = [k for k, v in fractions.items() if v == "official"]
    if official:
        off = base.official_split
        if off is None:
            raise QuantbenchError(f"data set {base.spec!r} has no official splits; give numeric fractions "
                                  f"instead of 'official' for {', '.join(map(repr, official))}")
        names = off[pool]
        known = sorted(set(names.tolist()))
        for key in official:
            if key not in known:
                raise QuantbenchError(f"split {key!r}: data set {base.spec!r} has no official split of that "
                                      f"name; official splits: {', '.join(known)}")
            result[key] = pool[names == key]
        pool = pool[~np.isin(names, official)]
    numeric = {k: v for k, v in fractions.items() if k not in official}
    for key, value in numeric.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise QuantbenchError(f"split {key!r}: fraction must be a number in (0, 1] or 'official', "
                                  f"got {value!r}")
    if sum(numeric.values()) > 1 + 1e-9:
        raise QuantbenchError(f"split fractions sum to {sum(numeric.values()):.6g} > 1: "
                              f"{dict(numeric)}")
    if numeric:
        totals = _totals([float(v) for v in numeric.values()], len(pool))
        for key, total in zip(numeric, totals, strict=True):
            if total == 0:
                raise QuantbenchError(f"split {key!r} would be empty: {numeric[key]} of {len(pool)} items")
        rng = np.random.default_rng(seed)
        for key, pos in zip(numeric, _allocate(base.targets[pool], totals, rng, stratify), strict=True):
            result[key] = pool[pos]
    return {key: DatasetView(base, result[key], name=key) for key in fractions}


def subset(ds: AnyDataset, n: int, seed: int = 0, stratify: bool = True) -> DatasetView:
    """Pick ``n`` items of ``ds``, stratified by class, deterministically from ``seed``.

    Typical use: a calibration set drawn from the training split,
    ``subset(parts["train"], 512)``.

    Raises:
        QuantbenchError: ``n`` is not a positive integer or exceeds the items available.

    Example:
        >>> calib = subset(open_dataset("digits"), 100, seed=0)  # doctest: +SKIP
    """
    base, pool = _base(ds)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise QuantbenchError(f"subset size must be a positive integer, got {n!r}")
    if n > len(pool):
        raise QuantbenchError(f"asked for a subset of {n} items but {base.spec!r} has only {len(pool)} "
                              "here")
    (pos,) = _allocate(base.targets[pool], [int(n)], np.random.default_rng(seed), stratify)
    name = ds.name if isinstance(ds, DatasetView) else None
    return DatasetView(base, pool[pos], name=name)
