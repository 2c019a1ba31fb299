"""The model registry and the one way to build a model by name.

Every family module registers its factories on :data:`MODELS` with the metadata
(``input_shape``, ``num_classes``, ``family``, ``description``) that experiments, tests and
the CLI need *without* building the model. Factories take ``num_classes`` and
``in_channels`` plus keyword-only hyper-parameters; the hyper-parameters are read from the
factory signature, so a new model documents its knobs just by declaring them.

Example:
    >>> from quantbench.models import build_model, model_info
    >>> model = build_model("resnet20")
    >>> model_info("phinet")["hyper"]["alpha"]
    0.5
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")

_BASE_ARGS = ("num_classes", "in_channels")


def hyper_defaults(name: str) -> dict[str, Any]:
    """Return the accepted hyper-parameters of model ``name`` with their defaults.

    Read from the factory signature (keyword-only arguments) so that metadata can never
    drift from the code.
    """
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    return {
        p.name: p.default
        for p in params.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _BASE_ARGS
    }


def model_info(name: str) -> dict[str, Any]:
    """Describe model ``name`` without building it.

    Args:
        name: A registered model name (see ``MODELS.names()``).

    Returns:
        A dict with ``name``, ``input_shape`` (C, H, W), ``num_classes``, ``in_channels``,
        ``family``, ``description`` and ``hyper`` (accepted hyper-parameters -> defaults).

    Raises:
        QuantbenchError: ``name`` is not registered.

    Example:
        >>> model_info("resnet20")["input_shape"]
        (3, 32, 32)
    """
    meta = MODELS.meta(name)
    shape = tuple(meta["input_shape"])
    return {
        "name": name,
        "input_shape": shape,
        "num_classes": meta["num_classes"],
        "in_channels": shape[0],
        "family": meta.get("family", ""),
        "description": meta.get("description", ""),
        "hyper": hyper_defaults(name),
    }


def _check_positive_int(name: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise QuantbenchError(f"model {name!r}: {key}={value!r}; expected a positive integer")
    return value


def _coerce_hyper(name: str, key: str, value: Any, default: Any) -> Any:
    """Check a hyper-parameter against the type of its default (values often come from YAML)."""
    expected: str | None = None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            expected = "true or false"
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            expected = "an integer"
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            expected = "a number"
        else:
            value = float(value)
    elif isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            expected = "a list of integers"
        else:
            value = tuple(value)
    if expected is not None:
        raise QuantbenchError(f"model {name!r}: hyper-parameter {key}={value!r}; expected {expected}")
    return value


def build_model(
    name: str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    **hyper: Any,
) -> nn.Module:
    """Build a freshly initialised model by registered name.

    Defaults for ``num_classes`` and ``in_channels`` come from the registry metadata, so
    ``build_model("resnet20")`` is the CIFAR-10 network the pretrained checkpoint expects.

    Args:
        name: A registered model name (see ``MODELS.names()``).
        num_classes: Classifier outputs; ``None`` uses the model's default.
        in_channels: Input image channels; ``None`` uses the model's default.
        **hyper: Model-specific hyper-parameters (see ``model_info(name)["hyper"]``).

    Returns:
        The model, in training mode, on CPU, float32.

    Raises:
        QuantbenchError: Unknown model name, unknown hyper-parameter (the message lists the
            accepted ones) or a value of the wrong type.

    Example:
        >>> net = build_model("phinet", num_classes=100, alpha=1.0)
    """
    factory = MODELS.get(name)
    meta = MODELS.meta(name)
    accepted = hyper_defaults(name)
    unknown = sorted(set(hyper) - set(accepted))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        raise QuantbenchError(
            f"model {name!r}: unknown hyper-parameter {', '.join(map(repr, unknown))}; accepted: {listed}"
        )
    checked = {k: _coerce_hyper(name, k, v, accepted[k]) for k, v in hyper.items()}
    nc = _check_positive_int(name, "num_classes", meta["num_classes"] if num_classes is None else num_classes)
    ic = _check_positive_int(
        name, "in_channels", meta["input_shape"][0] if in_channels is None else in_channels
    )
    return factory(num_classes=nc, in_channels=ic, **checked)
