"""Data the Python API is handed directly: a tensor, an ``(images, labels)`` pair, a DataLoader, a Dataset.

:func:`as_dataset` turns any of them - or a spec string - into the :class:`ImageDataset` every
experiment uses, so splitting, evaluation and calibration work the same as for files. In-memory
images are taken as the model expects them (already normalised: normalisation ``none``); images
without labels get label 0 (enough for calibration; accuracy then means nothing).

Example:
    >>> import torch
    >>> ds = as_dataset((torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])))
    >>> len(ds), ds.input_shape, ds.num_classes
    (4, (1, 8, 8), 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from quantbench.errors import QuantbenchError

__all__ = ["as_dataset"]

MAX_IN_MEMORY_IMAGES = 1_000_000


def _collect(data: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, labels or None) of a tensor, a pair, a DataLoader or a map-style Dataset."""
    if isinstance(data, torch.Tensor):
        return data, None
    if isinstance(data, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(data)), None
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (torch.Tensor, np.ndarray)):
        return torch.as_tensor(data[0]), torch.as_tensor(data[1])
    if hasattr(data, "tensors") and callable(data.tensors):
        x, y = data.tensors()
        return x, torch.as_tensor(y)
    if isinstance(data, torch.utils.data.DataLoader) or (hasattr(data, "__iter__") and not hasattr(data, "__len__")):
        xs, ys = [], []
        for batch in data:
            if isinstance(batch, (tuple, list)):
                xs.append(torch.as_tensor(batch[0]))
                ys.append(torch.as_tensor(batch[1]) if len(batch) > 1 else None)
            else:
                xs.append(torch.as_tensor(batch))
                ys.append(None)
            if sum(len(x) for x in xs) > MAX_IN_MEMORY_IMAGES:
                raise QuantbenchError(f"data: more than {MAX_IN_MEMORY_IMAGES:,} images; pass a data spec instead")
        if not xs:
            raise QuantbenchError("data: the DataLoader yielded no batches")
        labels = None if any(y is None for y in ys) else torch.cat([y.reshape(-1) for y in ys])
        return torch.cat(xs), labels
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        if items and isinstance(items[0], (tuple, list)):
            return torch.stack([torch.as_tensor(i[0]) for i in items]), torch.as_tensor([int(i[1]) for i in items])
        return torch.stack([torch.as_tensor(i) for i in items]), None
    raise QuantbenchError(f"data: expected a data spec string, a tensor, an (images, labels) pair, a DataLoader "
                          f"or a Dataset, got {type(data).__name__}")


def as_dataset(data: Any, *, normalize: str = "auto", resize: tuple[int, int] | None = None) -> Any:
    """An :class:`~quantbench.data.dataset.ImageDataset` (or the view given) for ``data``.

    Args:
        data: A spec string (``"digits"``, ``"imagefolder:DIR"``), an ImageDataset or view (returned as
            is), images ``N x C x H x W`` (tensor or numpy), an ``(images, labels)`` pair, a DataLoader
            or a Dataset of ``(image, label)`` items.
        normalize: For spec strings only (in-memory images are used as given).
        resize: (H, W) to resize images to.

    Raises:
        QuantbenchError: anything that is not images of shape N x C x H x W with integer labels.
    """
    from quantbench.data.dataset import ImageDataset, open_dataset
    from quantbench.data.spec import Source
    from quantbench.data.splits import DatasetView

    if isinstance(data, str):
        return open_dataset(data, normalize=normalize, resize=resize)
    if isinstance(data, (ImageDataset, DatasetView)):
        return data
    x, y = _collect(data)
    if x.dim() != 4 or not x.is_floating_point() and x.dtype != torch.uint8:
        raise QuantbenchError(f"data: images must be a float or uint8 N x C x H x W batch, got {tuple(x.shape)} "
                              f"{x.dtype}")
    if len(x) == 0:
        raise QuantbenchError("data: no images")
    if y is None:
        y = torch.zeros(len(x), dtype=torch.long)
    y = y.reshape(-1).long()
    if len(y) != len(x) or (y < 0).any():
        raise QuantbenchError(f"data: {len(x)} images but {len(y)} labels (labels must be integers >= 0)")
    classes = [str(i) for i in range(int(y.max()) + 1)]
    images = x if x.dtype == torch.uint8 else x.detach().float().cpu()
    c = int(x.shape[1])
    source = Source(classes=classes, targets=y.numpy(), shape=(c, int(x.shape[2]), int(x.shape[3])), images=images)
    norm = {"name": "none", "requested": "as given (in-memory images)", "mean": [0.0] * c, "std": [1.0] * c}
    if x.dtype == torch.uint8:
        norm["requested"] = "none (uint8 images scaled to [0, 1])"
    return ImageDataset("memory", source, norm, resize)
