"""Experiment configuration: frozen, validated dataclasses <-> YAML.

Why dataclasses and not a free-form dict: a typo in a YAML key (``epoch:`` for ``epochs:``)
must be an error naming the key, never a silently ignored setting. Every section is a
frozen dataclass; :func:`from_dict` checks keys and types recursively and :func:`to_dict`
gives the resolved config that is saved beside every result.

Example:
    >>> cfg = from_dict({"train": {"epochs": 3}})
    >>> cfg.train.epochs
    3
    >>> apply_overrides(cfg, ["model.name=resnet20"]).model.name
    'resnet20'
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quantbench.errors import QuantbenchError

CONFIG_VERSION = 1


@dataclass(frozen=True)
class DataConfig:
    """Which images, how they are normalised, and how one spec is split into roles."""

    spec: str = "digits"
    normalize: str = "auto"
    resize: int | None = None
    # Disjoint, stratified, seeded splits of the one data set: train / val / calib / test.
    split: dict[str, float] = field(
        default_factory=lambda: {"train": 0.6, "val": 0.1, "calib": 0.1, "test": 0.2}
    )
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """A zoo model by name, optional weights, and the model's own hyper-parameters."""

    name: str = "lenet"
    checkpoint: str | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    hyper: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """FP32 training (QAT reuses the same loop). ``epochs: 0`` skips training."""

    epochs: int = 12
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class MeasureConfig:
    """What to measure besides accuracy: latency per batch size, top-k."""

    topk: int = 5
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    threads: int | None = None
    warmup: int = 3
    min_iters: int = 10
    min_time_s: float = 0.3
    eval_batch_size: int = 256


@dataclass(frozen=True)
class QuantizeConfig:
    """Post-training quantization rows of an experiment: ``SCHEME[:ALGO]`` per method."""

    methods: tuple[str, ...] = ("w8a8:mse", "dynamic", "w4a8:minmax", "w4a8:adaround")
    calib_size: int = 512
    adaround_iters: int = 500
    sensitivity_images: int = 0
    qat: tuple[str, ...] = ("w8a8", "w4a4")  # quantization-aware fine-tuning rows (schemes), after PTQ
    qat_epochs: int = 3
    qat_lr: float = 1e-3


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: data -> model -> (train) -> measure -> store -> report."""

    version: int = CONFIG_VERSION
    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    store: str = "runs/quantbench.db"
    out_dir: str = "runs"


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
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except QuantbenchError as exc:
                errors.append(str(exc))
        raise QuantbenchError(f"config: {key} must be {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise QuantbenchError(f"config: {key} must be a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise QuantbenchError(f"config: {key} must be a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - an annotation this module does not know is a programming error
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    raise QuantbenchError(f"config: {key} must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise QuantbenchError(
            f"config: unknown key {(prefix + unknown[0])!r}; expected one of: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def from_dict(data: dict[str, Any] | None) -> ExperimentConfig:
    """Build a validated :class:`ExperimentConfig` from a plain dict (e.g. parsed YAML)."""
    data = dict(data or {})
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise QuantbenchError(f"config: version {version!r} is not supported; expected {CONFIG_VERSION}")
    cfg = _build(ExperimentConfig, data)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (tuples become lists), for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; every failure is one line naming the file (``what`` says which kind)."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise QuantbenchError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise QuantbenchError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(doc, dict):
        raise QuantbenchError(f"{path}: a {what} must be a mapping, got {type(doc).__name__}")
    return doc


def load(path: str | Path) -> ExperimentConfig:
    """Read a YAML experiment file; a missing or malformed file names itself in the error."""
    p = Path(path)
    if not p.is_file():
        raise QuantbenchError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QuantbenchError(f"{p}: not valid YAML ({first})") from None
    if data is not None and not isinstance(data, dict):
        raise QuantbenchError(f"{p}: expected a mapping of config sections at the top level")
    try:
        return from_dict(data)
    except QuantbenchError as exc:
        raise QuantbenchError(f"{p}: {exc}") from None


def save(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (what was really run, defaults included)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars) and re-validate."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise QuantbenchError(f"override {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise QuantbenchError(f"override {item!r}: unknown config section {part!r}")
            node = node[part]
        node[parts[-1]] = value
    return from_dict(data)


def validate(cfg: ExperimentConfig) -> None:
    """Value checks that types alone cannot express."""
    t = cfg.train
    if t.epochs < 0:
        raise QuantbenchError(f"config: train.epochs must be >= 0, got {t.epochs}")
    if t.batch_size <= 0:
        raise QuantbenchError(f"config: train.batch_size must be > 0, got {t.batch_size}")
    if t.lr <= 0:
        raise QuantbenchError(f"config: train.lr must be > 0, got {t.lr}")
    if t.optimizer not in ("sgd", "adamw"):
        raise QuantbenchError(f"config: train.optimizer must be sgd or adamw, got {t.optimizer!r}")
    if t.schedule not in ("cosine", "constant"):
        raise QuantbenchError(f"config: train.schedule must be cosine or constant, got {t.schedule!r}")
    m = cfg.measure
    if not m.batch_sizes or any(b <= 0 for b in m.batch_sizes):
        raise QuantbenchError(f"config: measure.batch_sizes must be positive integers, got {list(m.batch_sizes)}")
    if m.threads is not None and m.threads <= 0:
        raise QuantbenchError(f"config: measure.threads must be > 0, got {m.threads}")
    if m.topk < 1:
        raise QuantbenchError(f"config: measure.topk must be >= 1, got {m.topk}")
    q = cfg.quantize
    if q.calib_size <= 0:
        raise QuantbenchError(f"config: quantize.calib_size must be > 0, got {q.calib_size}")
    if q.methods:
        from quantbench.experiments.ptq import parse_method

        for method in q.methods:
            try:
                parse_method(method).plan()
                parse_method(method).algorithm()
            except QuantbenchError as exc:
                raise QuantbenchError(f"config: quantize.methods entry {method!r}: {exc}") from None
    if q.qat:
        if q.qat_epochs < 1:
            raise QuantbenchError(f"config: quantize.qat_epochs must be >= 1, got {q.qat_epochs}")
        if q.qat_lr <= 0:
            raise QuantbenchError(f"config: quantize.qat_lr must be > 0, got {q.qat_lr}")
        from quantbench.quant.spec import parse_scheme

        for scheme in q.qat:
            try:
                plan = parse_scheme(scheme)
            except QuantbenchError as exc:
                raise QuantbenchError(f"config: quantize.qat entry {scheme!r}: {exc}") from None
            if plan.default.act is None or plan.default.act.dynamic or plan.default.weight is None:
                raise QuantbenchError(f"config: quantize.qat entry {scheme!r}: QAT needs a static wXaY scheme")
    fr = cfg.data.split
    if any(v <= 0 for v in fr.values()) or sum(fr.values()) > 1.0 + 1e-9:
        raise QuantbenchError(f"config: data.split fractions must be > 0 and sum to <= 1, got {fr}")
