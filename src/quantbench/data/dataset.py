"""The one torch ``Dataset`` every loader feeds, and :func:`open_dataset` that builds it.

Small data sets (everything up to about 1 GB as uint8) are held as one NxCxHxW tensor
and normalised on access, so evaluation and training of small models can take all
images at once through :meth:`ImageDataset.tensors` instead of a Python loop per item.
Large image folders are decoded lazily per item. Both paths share the same transform
code, so per-item and bulk access give the same numbers.

Example:
    >>> ds = open_dataset("digits")
    >>> len(ds), ds.input_shape, ds.num_classes
    (1797, (1, 8, 8), 10)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from quantbench.data.spec import DATASETS, LoadOptions, Source, parse_spec
from quantbench.data.transforms import (
    as_size,
    channel_stats,
    fit_channels,
    normalize_batch,
    parse_normalization,
    resize_batch,
    to_unit,
)
from quantbench.errors import QuantbenchError

#: Items per chunk for bulk access; bounds the float32 temporaries.
CHUNK = 1024


class ImageDataset(Dataset):
    """Images with int labels; items are normalised float32 CxHxW tensors.

    Attributes:
        spec: The spec string the data set was opened from.
        classes: Class names; label i means ``classes[i]``.
        targets: int64 numpy array of labels, one per item.
        input_shape: (C, H, W) of an item as returned (after resize).
        normalization: ``{"name", "requested", "mean", "std"}`` actually applied; store it
            with results, since a model is only meaningful with its own normalisation.
        official_split: Per-item official split name ('train'/'test') or None.
        resize: The requested (H, W), or None.
    """

    def __init__(self, spec: str, source: Source, normalization: dict[str, Any],
                 resize: tuple[int, int] | None = None) -> None:
        self.spec = spec
        self.classes = list(source.classes)
        self.targets = source.targets
        self.official_split = source.official_split
        self.resize = resize
        self.normalization = normalization
        c, h, w = source.shape
        self.input_shape: tuple[int, int, int] = (c, resize[0], resize[1]) if resize else (c, h, w)
        self._source = source
        self._mean = torch.tensor(normalization["mean"], dtype=torch.float32)
        self._std = torch.tensor(normalization["std"], dtype=torch.float32)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``), also for classes with no items."""
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        """True when all pixels are held in memory (fast bulk access)."""
        return self._source.images is not None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = int(index)
        n = len(self)
        if i < -n or i >= n:
            raise IndexError(f"index {index} out of range for {n} items")
        i %= n
        x = self._prepare(self._raw(np.array([i], dtype=np.int64)), normalized=True)
        return x[0], int(self.targets[i])

    def raw(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Stored pixels at ``indices`` (uint8 0..255, or float 0..1 for digits/synthetic)."""
        return self._raw(np.asarray(indices, dtype=np.int64))

    def _raw(self, indices: np.ndarray) -> torch.Tensor:
        return _raw_source(self._source, indices)

    def _prepare(self, raw: torch.Tensor, normalized: bool) -> torch.Tensor:
        # ``raw`` is always a fresh tensor (advanced indexing copies; readers decode anew),
        # so the in-place normalisation below never touches the stored pixels.
        x = to_unit(raw)
        if not self._source.resized:
            x = resize_batch(x, self.resize)
        return normalize_batch(x, self._mean, self._std) if normalized else x

    def batches(self, batch_size: int = 256, indices: Sequence[int] | np.ndarray | None = None,
                *, normalized: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` batches in order, without a DataLoader.

        Args:
            batch_size: Items per batch (the last may be smaller).
            indices: Items to visit (default: all, in order).
            normalized: False gives [0, 1] pixels (after resize), e.g. for codecs.
        """
        idx = np.arange(len(self), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            yield (self._prepare(self._raw(part), normalized),
                   torch.from_numpy(self.targets[part].copy()))

    def tensors(self, indices: Sequence[int] | np.ndarray | None = None,
                *, normalized: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """All items (or those at ``indices``) at once: float32 NxCxHxW and int64 N.

        The fast path for small data sets: one tensor instead of a loop over items.
        Filled chunk by chunk so peak memory is about the size of the result.
        """
        idx = np.arange(len(self), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        check_memory(len(idx), self.input_shape, self.spec)
        out = torch.empty((len(idx), *self.input_shape), dtype=torch.float32)
        for start, (x, _) in zip(range(0, len(idx), CHUNK), self.batches(CHUNK, idx, normalized=normalized),
                                 strict=True):
            out[start:start + len(x)] = x
        return out, torch.from_numpy(self.targets[idx].copy())

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary to store with results."""
        return {"spec": self.spec, "items": len(self), "classes": self.classes,
                "input_shape": list(self.input_shape), "normalization": self.normalization,
                "resize": list(self.resize) if self.resize else None}

    def __repr__(self) -> str:
        return (f"ImageDataset(spec={self.spec!r}, items={len(self)}, classes={self.num_classes}, "
                f"input_shape={self.input_shape}, normalization={self.normalization['name']!r})")


def memory_budget_bytes() -> int:
    """Bytes one tensor of images may take: half of the memory available now (at least 256 MB)."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            info = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in fh if ln.split()[1:2]}
        free = info.get("MemAvailable", info.get("MemTotal", 0))
    except (OSError, ValueError, IndexError):
        free = 8 << 30
    return max(256 << 20, free // 2)


def check_memory(n: int, shape: Sequence[int], spec: str) -> None:
    """Refuse, in one line, a float32 image tensor this machine cannot hold (instead of a MemoryError)."""
    need = int(n) * int(np.prod(shape)) * 4
    budget = memory_budget_bytes()
    if need > budget:
        raise QuantbenchError(f"{spec}: {n:,} images of {'x'.join(map(str, shape))} need {need / 1e9:.1f} GB as float32, "
                              f"more than the {budget / 1e9:.1f} GB this machine can spare; use fewer images "
                              "(--eval-size) or a smaller --input-shape")


def _raw_source(source: Source, indices: np.ndarray) -> torch.Tensor:
    if source.images is not None:
        return source.images[torch.from_numpy(indices.astype(np.int64, copy=False))]
    assert source.reader is not None
    return source.reader.read(indices.tolist())


def _resolve_normalization(requested: str, kind: str, source: Source) -> dict[str, Any]:
    preset = parse_normalization(requested)
    name = DATASETS.meta(kind).get("auto_normalization", "dataset") if preset.name == "auto" else preset.name
    if preset.name != "custom":
        preset = parse_normalization(name)
    channels = source.shape[0]
    if preset.mean is None or preset.std is None:
        n = len(source.targets)
        chunks = (to_unit(_raw_source(source, np.arange(s, min(s + CHUNK, n)))) for s in range(0, n, CHUNK))
        mean, std = channel_stats(chunks, channels)
    else:
        mean = fit_channels(preset.mean, channels, f"{name!r} mean")
        std = fit_channels(preset.std, channels, f"{name!r} std")
    return {"name": name, "requested": requested, "mean": mean, "std": std}


def open_dataset(spec: str, *, normalize: str = "auto", resize: int | tuple[int, int] | None = None,
                 in_memory: bool | None = None) -> ImageDataset:
    """Open the data set named by ``spec`` (``KIND[:PATH]``), ready for a model.

    Args:
        spec: e.g. ``"digits"``, ``"mnist:~/data/mnist"``, ``"imagefolder:../shared/datasets/cifar10-jpeg/dev"``.
        normalize: A key of :data:`NORMALIZATIONS` (``"auto"`` picks the kind's usual one;
            ``"dataset"`` statistics are computed over all items at their stored size), or explicit
            per-channel statistics ``MEAN/STD`` such as ``"0.5,0.5,0.5/0.5,0.5,0.5"``.
        resize: Size S (SxS) or (H, W) to resize items to (bilinear), or None to keep their size.
        in_memory: imagefolder only: force (True) or forbid (False) decoding every image
            at open time; None decides from the estimated size (up to about 1 GB in memory).

    Returns:
        An :class:`ImageDataset`.

    Raises:
        QuantbenchError: Bad spec, preset or resize, or missing/malformed files (one line
            naming the file).

    Example:
        >>> ds = open_dataset("synthetic:n=32,shape=1x8x8,classes=4", normalize="none")
        >>> ds[0][0].shape
        torch.Size([1, 8, 8])
    """
    kind, path = parse_spec(spec)
    parse_normalization(normalize)
    resize = as_size(resize)
    source = DATASETS.get(kind)(path, LoadOptions(resize=resize, in_memory=in_memory))
    if len(source.targets) == 0:
        raise QuantbenchError(f"data set {spec!r} has no items")
    normalization = _resolve_normalization(normalize, kind, source)
    return ImageDataset(spec.strip(), source, normalization, resize)
