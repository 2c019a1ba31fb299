"""``digits``: scikit-learn's embedded 8x8 handwritten digits (1,797 real images).

Bundled with scikit-learn, so it needs no download and no path: the smallest *real*
image data set, good for end-to-end runs and examples that must finish in seconds.
Pixel values 0..16 are scaled to [0, 1] and kept as float32 (they are not 8-bit).

Example:
    >>> from quantbench.data import open_dataset
    >>> open_dataset("digits").input_shape
    (1, 8, 8)
"""

from __future__ import annotations

import numpy as np
import torch

from quantbench.data.spec import DATASETS, LoadOptions, Source


@DATASETS.register("digits", needs_path=False, accepts_path=False, auto_normalization="dataset",
                   description="scikit-learn handwritten digits: 1,797 real 8x8 grey images, 10 classes "
                               "(built in, no path)")
def load_digits(path: str | None, options: LoadOptions) -> Source:
    """Load the digits bundled with scikit-learn (imported lazily: it is slow to import)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1).contiguous()
    return Source(classes=[str(c) for c in range(10)], targets=bunch.target.astype(np.int64),
                  shape=(1, 8, 8), images=images)
