"""One tiny registry used for models, datasets, engines, codecs and algorithms.

Tests parametrize over ``REGISTRY.names()`` so that anything registered is tested
automatically (the timm habit).

Example:
    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny", input_shape=(1, 8, 8))
    ... def tiny(): ...
    >>> MODELS.names()
    ['tiny']
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from quantbench.errors import QuantbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually factories), each with a dict of metadata."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` with metadata ``meta``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            self._meta[name] = dict(meta)
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; unknown names are a user error."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names())
            raise QuantbenchError(f"unknown {self.kind} {name!r}; expected one of: {known}") from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
