"""``synthetic``: seeded, learnable fake images for tests and smoke runs.

Each class has its own smooth random template; an item is its class template, randomly
shifted by up to one pixel, with a random contrast and additive noise. A tiny CNN (or
even a nearest-centroid classifier) beats chance easily, yet the task is not trivial,
so accuracy changes under quantization are visible. Options go in the path part:
``synthetic:n=256,shape=3x16x16,classes=10,seed=0,noise=0.15`` (all optional).

Example:
    >>> from quantbench.data import open_dataset
    >>> len(open_dataset("synthetic:n=40,classes=4"))
    40
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from quantbench.data.spec import DATASETS, LoadOptions, Source
from quantbench.errors import QuantbenchError

DEFAULTS: dict[str, str] = {"n": "256", "shape": "3x16x16", "classes": "10", "seed": "0", "noise": "0.15"}


@dataclass(frozen=True)
class SyntheticOptions:
    """Parsed ``synthetic:`` options."""

    n: int
    shape: tuple[int, int, int]
    classes: int
    seed: int
    noise: float


def parse_options(text: str | None) -> SyntheticOptions:
    """Parse ``k=v,k=v`` into typed options, rejecting unknown keys and bad values."""
    raw = dict(DEFAULTS)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in DEFAULTS:
            raise QuantbenchError(f"synthetic option {item.strip()!r}: expected KEY=VALUE with KEY one of "
                                  f"{', '.join(DEFAULTS)} (e.g. synthetic:n=256,shape=3x16x16,classes=10,seed=0)")
        raw[key] = value.strip()
    try:
        n, classes, seed = int(raw["n"]), int(raw["classes"]), int(raw["seed"])
        noise = float(raw["noise"])
        shape = tuple(int(v) for v in raw["shape"].lower().split("x"))
    except ValueError:
        raise QuantbenchError(f"synthetic options {text!r}: n, classes, seed must be integers, noise a number, "
                              "shape CxHxW (e.g. 3x16x16)") from None
    if len(shape) != 3 or min(shape) < 1:
        raise QuantbenchError(f"synthetic shape {raw['shape']!r}: expected CxHxW with positive sizes, e.g. 3x16x16")
    if n < 1 or classes < 2 or noise < 0:
        raise QuantbenchError(f"synthetic options {text!r}: need n >= 1, classes >= 2, noise >= 0")
    return SyntheticOptions(n=n, shape=(shape[0], shape[1], shape[2]), classes=classes, seed=seed, noise=noise)


def make_images(n: int, shape: tuple[int, int, int], classes: int, seed: int,
                noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Return (float32 NxCxHxW images in [0, 1], int64 labels), fully determined by the arguments.

    Labels cycle through the classes (balanced) and are then shuffled.
    """
    c, h, w = shape
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.standard_normal((classes, c, max(2, h // 4), max(2, w // 4))).astype(np.float32))
    templates = F.interpolate(coarse, size=(h + 2, w + 2), mode="bilinear", align_corners=False).numpy()
    templates /= np.abs(templates).max(axis=(1, 2, 3), keepdims=True) + 1e-6
    labels = rng.permutation(np.arange(n) % classes).astype(np.int64)
    dy, dx = rng.integers(0, 3, size=(2, n))
    contrast = rng.uniform(0.25, 0.45, size=(n, 1, 1, 1)).astype(np.float32)
    images = np.empty((n, c, h, w), dtype=np.float32)
    for i in range(n):
        images[i] = templates[labels[i], :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    images = 0.5 + contrast * images + noise * rng.standard_normal(images.shape).astype(np.float32)
    return np.clip(images, 0.0, 1.0), labels


@DATASETS.register("synthetic", needs_path=False, accepts_path=True, auto_normalization="dataset",
                   description="seeded learnable fake images for tests; options as "
                               "synthetic:n=256,shape=3x16x16,classes=10,seed=0,noise=0.15")
def load_synthetic(path: str | None, options: LoadOptions) -> Source:
    """Generate the synthetic data set described by the options in ``path``."""
    o = parse_options(path)
    images, labels = make_images(o.n, o.shape, o.classes, o.seed, o.noise)
    return Source(classes=[str(k) for k in range(o.classes)], targets=labels, shape=o.shape,
                  images=torch.from_numpy(images))
