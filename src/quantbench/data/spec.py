"""What a data set spec string means, and the contract every loader fulfils.

A spec is ``KIND[:PATH]`` (``digits``, ``mnist:~/data/mnist``, ``synthetic:n=64,seed=1``).
Loaders are registered in :data:`DATASETS` by kind, so adding a format is one new module
and the CLI listing (``quantbench datasets``) picks it up without edits elsewhere.

Each loader turns ``PATH`` into a :class:`Source`: the decoded pixels (or a reader that
decodes them lazily), the labels and the class names. Normalisation, resizing and the
torch ``Dataset`` interface are added once, by :func:`quantbench.data.open_dataset`.

Example:
    >>> parse_spec("mnist:/data/mnist")
    ('mnist', '/data/mnist')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quantbench.errors import QuantbenchError
from quantbench.registry import Registry


@dataclass(frozen=True)
class LoadOptions:
    """Options open_dataset passes to every loader; most loaders ignore them.

    Attributes:
        resize: Target (H, W) or None. Only loaders that decode images of possibly
            different sizes (imagefolder) apply it themselves.
        in_memory: Force (True) or forbid (False) decoding everything at open time;
            None lets the loader decide from the estimated size.
    """

    resize: tuple[int, int] | None = None
    in_memory: bool | None = None


class LazyReader:
    """Decodes items on demand for data sets too large to hold in memory.

    Subclasses implement :meth:`read`; the object must be picklable so DataLoader
    workers can use it.
    """

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Return the items at ``indices`` as a uint8 NxCxHxW tensor."""
        raise NotImplementedError


@dataclass
class Source:
    """What a loader returns: raw pixels, labels and names, before normalisation.

    Attributes:
        classes: Class names; class index i is ``classes[i]``.
        targets: int64 labels, one per item.
        shape: (C, H, W) of one stored item.
        images: NxCxHxW tensor, uint8 (0..255) or float32 (0..1); None when lazy.
        reader: Lazy decoder used when ``images`` is None.
        official_split: Per-item name of the official split ('train'/'test') or None.
        resized: True when the loader already resized the items to the requested size.
    """

    classes: list[str]
    targets: np.ndarray
    shape: tuple[int, int, int]
    images: torch.Tensor | None = None
    reader: LazyReader | None = None
    official_split: np.ndarray | None = None
    resized: bool = False

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if (self.images is None) == (self.reader is None):
            raise ValueError("a Source needs exactly one of images or reader")
        if self.images is not None and len(self.images) != len(self.targets):
            raise ValueError("images and targets differ in length")


Loader = Callable[[str | None, LoadOptions], Source]

#: Loaders keyed by spec kind. Metadata: ``needs_path`` (bool), ``accepts_path`` (bool),
#: ``description`` (one line for ``quantbench datasets``), ``auto_normalization``
#: (the preset ``normalize="auto"`` resolves to).
DATASETS: Registry[Loader] = Registry("dataset")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``KIND[:PATH]`` and check the kind exists and the path is present if needed.

    Only the first ``:`` separates, so paths may contain colons. An empty path
    (``"mnist:"``) counts as missing. A bare existing folder is an ``imagefolder``.

    Args:
        spec: The data set spec string.

    Returns:
        ``(kind, path)``, path None when absent.

    Raises:
        QuantbenchError: Unknown kind (the message lists the known ones), a kind that
            needs a path without one, or a path given to a kind that takes none.

    Example:
        >>> parse_spec("digits")
        ('digits', None)
    """
    if not isinstance(spec, str) or not spec.strip():
        raise QuantbenchError(f"empty data set spec {spec!r}; expected KIND[:PATH], KIND one of: "
                              f"{', '.join(DATASETS.names())}")
    kind, sep, path = spec.strip().partition(":")
    kind = kind.strip()
    path = path.strip() or None
    if kind not in DATASETS and Path(spec.strip()).expanduser().is_dir():
        return "imagefolder", spec.strip()  # a bare folder of class sub-folders, as a user would pass it
    if kind not in DATASETS and ("/" in spec or "\\" in spec):
        raise QuantbenchError(f"data set folder {spec.strip()!r} does not exist; expected a folder of class "
                              f"sub-folders of images, or KIND[:PATH] with KIND one of: {', '.join(DATASETS.names())}")
    if kind not in DATASETS:
        raise QuantbenchError(f"unknown data set kind {kind!r} in spec {spec!r}; expected one of: "
                              f"{', '.join(DATASETS.names())}")
    meta = DATASETS.meta(kind)
    if meta.get("needs_path") and path is None:
        raise QuantbenchError(f"data set spec {spec!r} needs a path: write {kind}:DIR")
    if path is not None and not meta.get("accepts_path", True):
        raise QuantbenchError(f"data set spec {spec!r}: {kind} takes no path; write just {kind!r}")
    return kind, path


def require_dir(path: str, kind: str) -> Path:
    """Return ``path`` as an existing directory, or raise a one-line error naming it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise QuantbenchError(f"{kind} data set path {str(p)!r} does not exist; expected a directory")
    if not p.is_dir():
        raise QuantbenchError(f"{kind} data set path {str(p)!r} is a file; expected a directory")
    return p
