"""ONE experiment file format for ``run``, ``split``, every other verb's ``--config``, and sweeps.

::

    kind: ptq                        # the experiment kind (default: the verb's)
    name: resnet20-ptq               # a run name; for a sweep, its id in the store
    model: resnet20                  # any key of the kind's config (the verb's flags, with _)
    checkpoint: ../weights/r20.th    # relative paths are relative to THIS file
    data: imagefolder:../data/dev
    calib_size: 500
    grid:                            # optional: the cartesian product of these lists ...
      method: [w8a8:mse, w4a8:adaround]
      hyper.alpha: [0.25, 0.5]       # dotted keys set model hyper-parameters
    cells:                           # ... crossed with these variants (optional)
      - {}
      - {first_last: int8}

A file with ``grid`` or ``cells`` is a sweep (``quantbench sweep FILE``, or any verb's
``--config FILE``); without them it is one experiment. In a sweep, ``out`` is the folder that
holds the cells' folders (default ``runs/sweeps``).

Example:
    >>> f = read_experiment_file("examples/sweep_digits_ptq.yaml")  # doctest: +SKIP
    >>> f.kind, f.is_sweep  # doctest: +SKIP
    ('ptq', True)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError

__all__ = ["ExperimentFile", "merge_cell", "read_experiment_file", "resolve_paths"]

_STRUCTURE = ("kind", "grid", "cells")


@dataclass
class ExperimentFile:
    """A parsed experiment file: its kind, its keys (paths resolved), and a sweep's grid and cells."""

    path: Path
    kind: str
    values: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    cells: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_sweep(self) -> bool:
        return bool(self.grid) or bool(self.cells)

    @property
    def name(self) -> str:
        return str(self.values.get("name") or self.path.stem)


def merge_cell(*parts: dict[str, Any]) -> dict[str, Any]:
    """Later mappings win; ``hyper.X`` keys and ``hyper`` mappings merge into one ``hyper``."""
    out: dict[str, Any] = {}
    hyper: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            k = str(k)
            if k == "hyper":
                from quantbench.config import parse_hyper

                hyper.update(parse_hyper(v))
            elif k.startswith("hyper."):
                hyper[k[6:]] = v
            else:
                out[k] = v
    if hyper:
        out["hyper"] = hyper
    return out


def _resolve(value: Any, kind: str, base: Path) -> Any:
    """A relative path in a YAML file, made relative to the file's folder."""
    if not isinstance(value, str) or not value:
        return value
    if kind == "file":
        p = Path(value).expanduser()
        return value if p.is_absolute() else str(base / p)
    if kind == "data":
        head, sep, path = value.partition(":")
        if not sep or not path.strip() or "=" in path:  # digits, synthetic:n=64,... : no path
            return value
        p = Path(path.strip()).expanduser()
        return value if p.is_absolute() else f"{head}:{base / p}"
    if kind == "model":
        from quantbench.models.sources import source_kind

        sk = source_kind(value)
        if sk in ("onnx", "pt2"):
            p = Path(value).expanduser()
            return value if p.is_absolute() else str(base / p)
        if sk == "python":
            target, _, factory = value.rpartition(":")
            if target.endswith(".py") or "/" in target:
                p = Path(target).expanduser()
                return value if p.is_absolute() else f"{base / p}:{factory}"
    return value


def resolve_paths(values: dict[str, Any], config: type, base: str | Path) -> dict[str, Any]:
    """``values`` (from a YAML file in folder ``base``) with every path field resolved against ``base``.

    Raises:
        QuantbenchError: never for paths (missing files are reported where they are opened).
    """
    kinds = {f.name: f.metadata.get("path") for f in dataclasses.fields(config)}
    out = dict(values)
    for key, value in values.items():
        kind = kinds.get(key)
        if kind:
            if isinstance(value, list):
                out[key] = [_resolve(v, kind, Path(base)) for v in value]
            else:
                out[key] = _resolve(value, kind, Path(base))
    return out


def read_experiment_file(path: str | Path, kind: str | None = None) -> ExperimentFile:
    """Read and validate an experiment file; ``kind`` is the verb's (a file naming another kind is refused).

    Raises:
        QuantbenchError: unreadable or malformed file, an unknown kind, an unknown key (named with the
            file), a grid entry that is not a non-empty list.
    """
    from quantbench.config import read_yaml_mapping
    from quantbench.experiments import kinds  # noqa: F401 - registers the built-in kinds
    from quantbench.experiments.layer import KINDS

    p = Path(path)
    doc = read_yaml_mapping(p, "experiment file")
    file_kind = doc.get("kind")
    if file_kind is not None and not isinstance(file_kind, str):
        raise QuantbenchError(f"{path}: kind must be a name, got {file_kind!r}")
    if kind is not None and file_kind is not None and file_kind != kind:
        raise QuantbenchError(f"{path}: is a {file_kind!r} experiment file; this verb runs {kind!r} "
                              f"(use `quantbench sweep {path}` or the {file_kind} verb)")
    name = file_kind or kind
    if name is None:
        raise QuantbenchError(f"{path}: says no kind; add `kind:` (one of {', '.join(KINDS.names())})")
    cls = KINDS.get(name).config  # an unknown kind is named
    grid = doc.get("grid") or {}
    cells = doc.get("cells") or []
    if not isinstance(grid, dict):
        raise QuantbenchError(f"{path}: grid must be a mapping of key -> list of values")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise QuantbenchError(f"{path}: grid.{k} must be a non-empty list, got {v!r}")
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise QuantbenchError(f"{path}: cells must be a list of mappings")
    base = p.parent
    values = resolve_paths({k: v for k, v in doc.items() if k not in _STRUCTURE}, cls, base)
    grid = {str(k): [resolve_paths({str(k): v}, cls, base)[str(k)] for v in vs] for k, vs in grid.items()}
    cells = [resolve_paths(c, cls, base) for c in cells]
    known = {f for f in cls.__dataclass_fields__}
    for k in [*values, *grid, *(key for c in cells for key in c)]:
        key = str(k)
        if key not in known and not key.startswith("hyper."):
            raise QuantbenchError(f"{path}: unknown key {key!r} for a {name} experiment; expected one of: "
                                  f"{', '.join(sorted(known))} (or hyper.NAME)")
    return ExperimentFile(p, name, values, {k: list(v) for k, v in grid.items()}, [dict(c) for c in cells])
