"""Command-line flags derived from an experiment kind's config dataclass, and configs built from them.

A field declared with :func:`quantbench.config.option` becomes ``--field-name`` with the field's
help text and default; so the same concept has the same flag, help and default on every verb
that has it, and no flag exists without help text. Values are parsed by
:func:`quantbench.config.build` (one-line errors naming the key), not by argparse, so a flag,
a YAML key and an API keyword are validated by the same code.

Example:
    >>> import argparse
    >>> from quantbench.experiments.layer import config_for
    >>> p = argparse.ArgumentParser()
    >>> add_config_flags(p, type(config_for("eval")))
    >>> vars(p.parse_args(["--model", "resnet20", "--topk", "3"]))
    {'model': 'resnet20', 'topk': 3}
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

__all__ = ["add_config_flags", "flag_name"]


def flag_name(f: dataclasses.Field) -> str:
    """``--calib-size`` for ``calib_size``; a default-True switch is ``--no-...``."""
    meta = f.metadata
    if meta.get("flag"):
        return meta["flag"]
    name = f.name.replace("_", "-")
    if f.type in (bool, "bool") and f.default is True:
        return f"--no-{name}"
    return f"--{name}"


def _scalar(tp: Any) -> Any:
    """The argparse type of a field: int/float for numbers (Optional unwrapped), None (a string) otherwise."""
    if isinstance(tp, str):
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar(inner[0]) if len(inner) == 1 else None
    return tp if tp in (int, float) else None


def _default_text(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    if default in (None, (), {}, False, True, ""):
        return ""
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return f" (default: {default})"


def add_config_flags(parser: argparse.ArgumentParser, config: type) -> None:
    """One flag per field of ``config`` (fields declared ``cli=False`` have none); values are SUPPRESSed
    when absent, so only typed flags override a config file."""
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        tp = hints[f.name]
        flag = flag_name(f)
        help_text = str(meta.get("help", "")).replace("%", "%%") + _default_text(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if tp is bool:
            kwargs["action"] = "store_false" if flag.startswith("--no-") and f.default is True else "store_true"
        elif f.name == "hyper":
            kwargs.update(action="append", metavar=meta.get("metavar") or "K=V,...")
        else:
            scalar = _scalar(tp)
            if scalar is not None:
                kwargs["type"] = scalar
            if meta.get("choices") and typing.get_origin(tp) is not tuple:
                kwargs["choices"] = list(meta["choices"])
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
            elif scalar is not None:
                kwargs["metavar"] = "N" if scalar is int else "X"
        parser.add_argument(flag, **kwargs)
