"""``imagefolder:DIR``: one subfolder per class, images inside (the torchvision layout).

Class index = position of the folder name in sorted order (for CIFAR-10 that is the
official order airplane..truck). Images are converted to RGB. Folders that fit in about
1 GB as uint8 are decoded completely at open time, so a corrupt image is reported up
front (naming the file) rather than in the middle of a long run, and so bulk access is
a tensor slice. Larger folders (e.g. ImageNet val) are decoded lazily per item.

With ``resize`` the images are resized here with Pillow (bilinear, antialiased when
shrinking), which also lets folders of mixed image sizes be stacked.

Example:
    >>> ds = open_dataset("imagefolder:../shared/datasets/cifar10-jpeg/dev")  # doctest: +SKIP
    >>> len(ds), ds.input_shape  # doctest: +SKIP
    (5000, (3, 32, 32))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from quantbench.data.spec import DATASETS, LazyReader, LoadOptions, Source, require_dir
from quantbench.errors import QuantbenchError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")
#: Folders estimated above this many uint8 bytes are decoded lazily.
MAX_IN_MEMORY_BYTES = 1 << 30
#: Below this many pixels per image, decoding is so quick that threads only add overhead
#: (measured: 5,000 32x32 JPEGs decode in ~0.4 s serially, ~0.7 s with 2-4 threads).
THREADS_FROM_PIXELS = 128 * 128


def scan(root: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """List class folders (sorted) and their image files (sorted, recursively).

    Raises:
        QuantbenchError: No class subfolders, or a class folder without images.
    """
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        loose = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir())
        hint = " (it holds images directly; put them in one subfolder per class)" if loose else ""
        raise QuantbenchError(f"image folder {str(root)!r} has no class subfolders{hint}; "
                              "expected DIR/<class>/<image>")
    files: list[Path] = []
    targets: list[int] = []
    for index, folder in enumerate(class_dirs):
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [Path(dirpath) / f for f in sorted(filenames)
                      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise QuantbenchError(f"class folder {str(folder)!r} has no images (expected files ending in "
                                  f"{', '.join(IMAGE_EXTENSIONS)})")
        files += found
        targets += [index] * len(found)
    return [d.name for d in class_dirs], files, np.asarray(targets, dtype=np.int64)


def decode(path: Path, resize: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image to a uint8 CxHxW RGB array, optionally resized to (H, W).

    Raises:
        QuantbenchError: The file is not a readable image (the message names it).
    """
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            if resize is not None and rgb.size != (resize[1], resize[0]):
                rgb = rgb.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
            return np.asarray(rgb).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise QuantbenchError(f"cannot decode image {str(path)!r}: {exc}") from None


def _map(fn: Callable[[int], None], count: int, threaded: bool) -> None:
    if threaded and count > 1:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for _ in pool.map(fn, range(count)):
                pass
    else:
        for i in range(count):
            fn(i)


class FolderReader(LazyReader):
    """Decodes image files on demand; every item must decode to ``shape``."""

    def __init__(self, files: Sequence[Path], shape: tuple[int, int, int], resize: tuple[int, int] | None,
                 threaded: bool) -> None:
        self.files = list(files)
        self.shape = shape
        self.resize = resize
        self.threaded = threaded

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Decode the items at ``indices`` into a uint8 NxCxHxW tensor."""
        out = np.empty((len(indices), *self.shape), dtype=np.uint8)

        def one(k: int) -> None:
            out[k] = self._check(self.files[indices[k]], decode(self.files[indices[k]], self.resize))

        _map(one, len(indices), self.threaded)
        return torch.from_numpy(out)

    def _check(self, path: Path, arr: np.ndarray) -> np.ndarray:
        if arr.shape != self.shape:
            raise QuantbenchError(f"image {str(path)!r} is {arr.shape[2]}x{arr.shape[1]} but earlier images are "
                                  f"{self.shape[2]}x{self.shape[1]}; pass --input-shape CxHxW to resize images of mixed sizes")
        return arr


@DATASETS.register("imagefolder", needs_path=True, accepts_path=True, auto_normalization="imagenet",
                   description="DIR/<class>/<image> folders (jpg, png, ...): classes in sorted folder order, "
                               "RGB; decoded up front when it fits in ~1 GB, else lazily")
def load_imagefolder(path: str | None, options: LoadOptions) -> Source:
    """Scan the folder, then decode everything now (small) or build a lazy reader (large)."""
    assert path is not None
    root = require_dir(path, "imagefolder")
    try:
        classes, files, targets = scan(root)
    except OSError as exc:
        raise QuantbenchError(f"cannot list image folder {str(root)!r}: {exc}") from None
    first = decode(files[0], options.resize)
    with Image.open(files[0]) as im:
        threaded = im.size[0] * im.size[1] >= THREADS_FROM_PIXELS
    shape = (int(first.shape[0]), int(first.shape[1]), int(first.shape[2]))
    reader = FolderReader(files, shape, options.resize, threaded)
    eager = options.in_memory
    if eager is None:
        eager = len(files) * first.nbytes <= MAX_IN_MEMORY_BYTES
    images = reader.read(range(len(files))) if eager else None
    return Source(classes=classes, targets=targets, shape=shape, images=images,
                  reader=None if eager else reader, resized=options.resize is not None)
