"""Configuration machinery: frozen, validated dataclasses <-> YAML and command-line flags.

Why dataclasses and not a free-form dict: a typo in a YAML key (``epoch:`` for ``epochs:``) must
be an error naming the key, never a silently ignored setting. Every experiment kind
(:mod:`quantbench.experiments.kinds`) is one frozen dataclass whose fields are declared with
:func:`option`: the default, the help text, the valid range and whether the value is a path all
live in that one declaration, and the command-line flags, the YAML keys and the validation are
derived from it (:func:`build`, :mod:`quantbench.cli.flags`).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     epochs: int = option(3, "training epochs", ge=0)
    >>> build(Demo, {"epochs": 5}).epochs
    5
    >>> build(Demo, {"epochs": -1})
    Traceback (most recent call last):
    ...
    quantbench.errors.QuantbenchError: config: epochs must be >= 0, got -1
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quantbench.errors import QuantbenchError

__all__ = ["TrainConfig", "build", "option", "parse_hyper", "parse_shape", "read_yaml_mapping", "to_dict"]

_MISSING = dataclasses.MISSING


def option(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None,
           choices: tuple[Any, ...] | None = None, gt: float | None = None, ge: float | None = None,
           le: float | None = None, path: str | None = None, cli: bool = True) -> Any:
    """A config field: its default, help text, valid values and how it appears on the command line.

    Args:
        flag: The long flag (default ``--<name with dashes>``).
        choices / gt / ge / le: Valid values, checked by :func:`build` with a message naming the key.
        path: ``"file"``, ``"data"`` (a ``KIND:PATH`` spec) or ``"model"`` (a model source): relative
            paths in a YAML file are resolved against the file's folder.
        cli: False for keys that only exist in YAML files.
    """
    meta = {"help": help, "flag": flag, "metavar": metavar, "choices": choices, "gt": gt, "ge": ge, "le": le,
            "path": path, "cli": cli}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- parsing helpers


def parse_shape(value: Any, key: str = "input_shape") -> tuple[int, int, int] | None:
    """``"3x32x32"`` or ``[3, 32, 32]`` -> ``(3, 32, 32)``; None stays None.

    Example:
        >>> parse_shape("3x224x160")
        (3, 224, 160)
    """
    if value is None:
        return None
    parts = value.lower().replace(" ", "").split("x") if isinstance(value, str) else value
    try:
        dims = tuple(int(p) for p in parts) if isinstance(parts, (list, tuple)) else ()
    except (TypeError, ValueError):
        dims = ()
    if len(dims) != 3 or any(d < 1 for d in dims) or any(isinstance(p, bool) for p in parts):
        raise QuantbenchError(f"config: {key} must be CxHxW with positive integers (e.g. 3x224x224), got {value!r}")
    if max(dims[1:]) > 8192 or dims[0] > 64:
        raise QuantbenchError(f"config: {key} {value!r} is too large (at most 64 channels and 8192 pixels a side)")
    return dims  # type: ignore[return-value]


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets (``a=[1,2],b=3`` -> two items)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{(" and 1 or 0
        depth -= ch in "]})" and 1 or 0
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [p for p in (s.strip() for s in out) if p]


def parse_hyper(items: Any, key: str = "hyper") -> dict[str, Any]:
    """``"a=1,b=[2,3]"`` (or a list of such strings, or a mapping) -> ``{"a": 1, "b": [2, 3]}``.

    Values are YAML scalars/lists, so ``true``, ``0.5`` and ``[8, 16]`` get their types.

    Example:
        >>> parse_hyper(["alpha=0.5,pad_layer=false", "width=[8,16]"])
        {'alpha': 0.5, 'pad_layer': False, 'width': [8, 16]}
    """
    if items is None:
        return {}
    if isinstance(items, dict):
        return {str(k): v for k, v in items.items()}
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, (list, tuple)):
        raise QuantbenchError(f"config: {key} expects KEY=VALUE items or a mapping, got {items!r}")
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str):
            raise QuantbenchError(f"config: {key} expects KEY=VALUE items, got {item!r}")
        for pair in _split_top(item):
            name, sep, raw = pair.partition("=")
            if not sep or not name.strip():
                raise QuantbenchError(f"config: {key} expects KEY=VALUE, got {pair!r}")
            try:
                out[name.strip()] = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                out[name.strip()] = raw
    return out


# ----------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (list->tuple, int->float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except QuantbenchError:
                continue
        raise QuantbenchError(f"config: {key} must be {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise QuantbenchError(f"config: {key} must be a mapping, got {value!r}")
        return build(tp, value, key + ".")
    if origin is tuple:
        inner = args[0] if args else Any
        if isinstance(value, str):  # "1,8,32" from a flag or a YAML scalar
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise QuantbenchError(f"config: {key} must be a list, got {value!r}")
        return tuple(_coerce(_number(v) if inner in (int, float) else v, inner, f"{key}[{i}]")
                     for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise QuantbenchError(f"config: {key} must be a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    if tp not in (bool, int, float, str):  # pragma: no cover - an annotation this module does not know
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    raise QuantbenchError(f"config: {key} must be {_type_name(tp)}, got {value!r}")


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v
    return v


def _check_range(name: str, value: Any, meta: dict[str, Any]) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v) and any(meta.get(k) is not None for k in ("gt", "ge", "le")):
            raise QuantbenchError(f"config: {name} must be a finite number, got {v!r}")
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise QuantbenchError(f"config: {name} must be one of {', '.join(map(str, meta['choices']))}, got {v!r}")
        if meta.get("gt") is not None and not v > meta["gt"]:
            raise QuantbenchError(f"config: {name} must be > {meta['gt']:g}, got {v!r}")
        if meta.get("ge") is not None and not v >= meta["ge"]:
            raise QuantbenchError(f"config: {name} must be >= {meta['ge']:g}, got {v!r}")
        if meta.get("le") is not None and not v <= meta["le"]:
            raise QuantbenchError(f"config: {name} must be <= {meta['le']:g}, got {v!r}")


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of the dataclass ``cls`` from ``data``: unknown keys, wrong types and values out
    of range are one-line errors naming the key; ``input_shape`` and ``hyper`` accept their text forms."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise QuantbenchError(f"config: unknown key {(prefix + str(unknown[0]))!r}; expected one of: "
                              f"{', '.join(sorted(fields))}")
    kwargs = {}
    for k, v in data.items():
        if k == "input_shape":
            v = parse_shape(v, prefix + k)
        elif k == "hyper":
            v = parse_hyper(v, prefix + k)
        kwargs[k] = _coerce(v, hints[k], prefix + k)
        _check_range(prefix + k, kwargs[k], dict(fields[k].metadata))
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        check()
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (tuples become lists), for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


# ----------------------------------------------------------------------------- YAML


class _BoundedLoader(yaml.SafeLoader):
    """A safe loader that refuses alias bombs and absurd nesting (a 0.5 KB file must not expand to GBs)."""

    max_nodes = 200_000
    max_depth = 64

    def construct_document(self, node: Any) -> Any:
        count, stack = 0, [(node, 0)]
        while stack:
            n, depth = stack.pop()
            count += 1
            if count > self.max_nodes:
                raise yaml.YAMLError(f"more than {self.max_nodes} values (alias expansion?)")
            if depth > self.max_depth:
                raise yaml.YAMLError(f"nested deeper than {self.max_depth} levels")
            if isinstance(n, yaml.SequenceNode):
                stack.extend((c, depth + 1) for c in n.value)
            elif isinstance(n, yaml.MappingNode):
                for k, v in n.value:
                    stack.extend(((k, depth + 1), (v, depth + 1)))
        return super().construct_document(node)


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; every failure is one line naming the file (``what`` says which kind)."""
    p = Path(path)
    try:
        if p.stat().st_size > 4 << 20:
            raise QuantbenchError(f"{path}: a {what} of {p.stat().st_size:,} bytes is too large (4 MB at most)")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise QuantbenchError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise QuantbenchError(f"{path}: a {what} must be UTF-8 text") from None
    try:
        doc = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, RecursionError) as exc:
        raise QuantbenchError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(doc, dict):
        raise QuantbenchError(f"{path}: a {what} must be a mapping, got {type(doc).__name__}")
    return doc


# ----------------------------------------------------------------------------- training-loop settings


@dataclass(frozen=True)
class TrainConfig:
    """What :func:`quantbench.train.fit` needs (FP32 and QAT share it). ``epochs: 0`` skips training."""

    epochs: int = 12
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    seed: int = 0
