"""Pixel transforms shared by every data set: scale to [0, 1], resize, normalise.

They live in one place so that per-item access, :meth:`ImageDataset.tensors` and batch
iteration produce identical numbers, and so the normalisation actually used can be
stored with every result (a pretrained model is only meaningful with its own mean/std).

Example:
    >>> NORMALIZATIONS["cifar"].mean
    (0.4914, 0.4822, 0.4465)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from quantbench.errors import QuantbenchError


@dataclass(frozen=True)
class Normalization:
    """A normalisation preset; ``mean``/``std`` None means "computed from the data"."""

    name: str
    description: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


#: Presets accepted by ``open_dataset(normalize=...)``.
NORMALIZATIONS: dict[str, Normalization] = {
    n.name: n
    for n in (
        Normalization("imagenet", "ImageNet mean/std (torchvision and most pretrained models)",
                      (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        Normalization("cifar", "CIFAR-10 training-set mean/std",
                      (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        Normalization("none", "no normalisation: pixels scaled to [0, 1]", (0.0,), (1.0,)),
        Normalization("dataset", "per-channel mean/std computed from the data set itself (all items)"),
        Normalization("auto", "the data set kind's default: dataset for digits/mnist/fashion-mnist/"
                      "synthetic, cifar for cifar10/100, imagenet for imagefolder"),
    )
}


def check_preset(name: str) -> Normalization:
    """Return the preset called ``name`` or raise a one-line error listing the presets."""
    try:
        return NORMALIZATIONS[name]
    except (KeyError, TypeError):
        raise QuantbenchError(f"unknown normalisation {name!r}; expected one of: "
                              f"{', '.join(NORMALIZATIONS)}, or MEAN/STD per channel") from None


def fit_channels(values: tuple[float, ...], channels: int, what: str) -> list[float]:
    """Adapt preset statistics to the data's channel count.

    A 3-channel preset on 1-channel data uses the mean of its channels (so ``imagenet``
    still means something for grey images); a 1-value preset is broadcast.
    """
    if len(values) == channels:
        return [float(v) for v in values]
    if channels == 1:
        return [float(np.mean(values))]
    if len(values) == 1:
        return [float(values[0])] * channels
    raise QuantbenchError(f"normalisation {what} has {len(values)} channels but the data has {channels}; "
                          "use normalize='dataset' or 'none'")


def channel_stats(batches: Iterable[torch.Tensor], channels: int) -> tuple[list[float], list[float]]:
    """Per-channel population mean and std of [0, 1] batches, accumulated in float64.

    Deterministic for a fixed batch order. A constant channel gets std 1 so that
    normalising never divides by zero.
    """
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for batch in batches:
        x = batch.to(torch.float64).transpose(0, 1).reshape(channels, -1)
        total += x.sum(dim=1)
        total_sq += (x * x).sum(dim=1)
        count += x.shape[1]
    if count == 0:
        raise ValueError("no pixels to compute statistics from")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


def to_unit(raw: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1; float input is taken to be in [0, 1] already."""
    if raw.dtype == torch.uint8:
        return raw.to(torch.float32).div_(255.0)
    return raw.to(torch.float32)


def resize_batch(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of an NxCxHxW float batch to (H, W)."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def as_size(resize: Any) -> tuple[int, int] | None:
    """``S`` -> ``(S, S)``; ``(H, W)`` stays; None stays None; anything else is a one-line error.

    Example:
        >>> as_size(32), as_size((24, 40))
        ((32, 32), (24, 40))
    """
    if resize is None:
        return None
    dims = (resize, resize) if isinstance(resize, int) and not isinstance(resize, bool) else resize
    if (not isinstance(dims, (tuple, list)) or len(dims) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 8192 for d in dims)):
        raise QuantbenchError(f"resize must be a side S or (H, W) with 1..8192 pixels, got {resize!r}")
    return (int(dims[0]), int(dims[1]))


def parse_normalization(text: str) -> Normalization:
    """A preset name, or explicit per-channel statistics ``MEAN/STD`` (``0.5,0.5,0.5/0.5,0.5,0.5``).

    Example:
        >>> parse_normalization("0.5,0.5,0.5/0.25,0.25,0.25").std
        (0.25, 0.25, 0.25)
    """
    if isinstance(text, str) and "/" in text:
        mean_s, _, std_s = text.partition("/")
        try:
            mean = tuple(float(v) for v in mean_s.split(",") if v.strip())
            std = tuple(float(v) for v in std_s.split(",") if v.strip())
        except ValueError:
            mean = std = ()
        if not mean or len(mean) != len(std) or not all(np.isfinite(mean)) or not all(s > 0 and np.isfinite(s)
                                                                                       for s in std):
            raise QuantbenchError(f"normalisation {text!r}: expected MEAN/STD, comma-separated per channel with "
                                  "finite means and positive stds (e.g. 0.5,0.5,0.5/0.5,0.5,0.5)")
        return Normalization("custom", f"mean {mean}, std {std}", mean, std)
    return check_preset(text)


def normalize_batch(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel, IN PLACE on an NxCxHxW float batch (returned).

    In place because it is ~30x faster here than the out-of-place broadcast (measured on
    1024x3x32x32: 0.5 ms vs 17 ms); callers pass a batch they own.
    """
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
