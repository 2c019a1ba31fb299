"""Model and data for a handler: resolve the model source, open the data at the model's size, split it.

One function for every kind, so every verb, sweep cell and API call splits data the same way:

* **evaluation** gets what nobody trains or calibrates on: all of ``--data`` when nothing else
  is needed; otherwise the part of it left after the training split (``--train-fraction``,
  stratified, seeded) or after the calibration images;
* **training / fine-tuning** images are ``--train-data`` when given, else a stratified split of
  ``--data``;
* **calibration** images are ``--calib`` when given, else a seeded subset of the training
  images, else a disjoint split of ``--data`` (never an evaluation image);
* **validation** (``val_fraction``: per-epoch checks, choices such as accuracy control) is a share
  of the training split's source, else of what calibration left; never an evaluation image.

The data is opened at the model's input size when the model fixes one (an ONNX/pt2 file, or
``--input-shape``), so images of any size are fed at H x W; otherwise the model is built for the
data (its classes and channels).

Example:
    >>> p = prepare(config_for("eval", {"model": "lenet"}))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.experiments.records import RowKey

__all__ = ["Prepared", "prepare", "prepare_model"]


@dataclass
class Prepared:
    """What a handler works on."""

    loaded: Any  # quantbench.models.sources.LoadedModel
    model: nn.Module
    ds: Any  # the opened data set
    test: Any
    train: Any = None
    val: Any = None
    calib: Any = None
    split: dict[str, str] = field(default_factory=dict)
    topk: int = 5

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.ds.input_shape)  # type: ignore[return-value]

    @property
    def key(self) -> RowKey:
        return RowKey(model=self.loaded.label, data=self.ds.spec)

    def rebuild_info(self) -> dict[str, Any]:
        """What a saved quantized model records to rebuild this architecture (``.qbm`` header)."""
        return {"model_name": self.loaded.source, "model_kwargs": self.model_kwargs(),
                "input_shape": self.input_shape}

    def model_kwargs(self) -> dict[str, Any]:
        loaded = self.loaded
        kwargs: dict[str, Any] = {"hyper": dict(loaded.hyper)}
        if loaded.num_classes is None:
            kwargs["num_classes"] = self.ds.num_classes
            kwargs["in_channels"] = self.input_shape[0]
        if loaded.fixed_shape:
            kwargs["input_shape"] = list(self.input_shape)
        return kwargs


def prepare_model(cfg: Any, *, num_classes: int | None = None, in_channels: int | None = None,
                  model: nn.Module | None = None) -> Any:
    """The config's model (``model``, an in-memory module, wins: the Python API passes its own)."""
    from quantbench.models.sources import LoadedModel, resolve_model

    if model is not None:
        shape = cfg.input_shape or getattr(model, "input_shape", None)
        return LoadedModel(model.eval(), cfg.model, "module",
                           tuple(shape) if shape else None, None, bool(cfg.input_shape), {},
                           ["an in-memory nn.Module passed to the Python API"])
    return resolve_model(cfg.model, hyper=cfg.hyper, checkpoint=cfg.checkpoint,
                         num_classes=cfg.num_classes or num_classes, in_channels=in_channels,
                         input_shape=cfg.input_shape)


def _open(spec: str, cfg: Any, size: tuple[int, int] | None) -> Any:
    from quantbench.data import open_dataset

    return open_dataset(spec, normalize=cfg.normalize, resize=size)


def prepare(cfg: Any, ctx: Any = None, *, train: bool = False, calib: bool = False,
            val_fraction: float = 0.0) -> Prepared:
    """Resolve ``cfg.model`` and split ``cfg.data`` into the roles asked for (see the module docstring).

    ``ctx`` (the handler's :class:`~quantbench.experiments.layer.Context`) may carry an in-memory model
    and data (the Python API's), used instead of ``cfg.model`` / ``cfg.data``; its ``log`` gets the
    model's import notes.
    """
    from quantbench.data import split_dataset, subset
    from quantbench.data.memory import as_dataset
    from quantbench.models.sources import source_kind

    model = getattr(ctx, "model", None)
    data = getattr(ctx, "data", None)
    log = getattr(ctx, "log", None)

    fixed = cfg.input_shape
    loaded = None
    if fixed is None and model is None and source_kind(cfg.model) in ("onnx", "pt2"):
        loaded = prepare_model(cfg)
        fixed = loaded.input_shape
    size = (fixed[1], fixed[2]) if fixed is not None else None
    ds = _open(cfg.data, cfg, size) if data is None else as_dataset(data, resize=size)
    if fixed is not None and ds.input_shape[0] != fixed[0]:
        raise QuantbenchError(f"{cfg.data}: images have {ds.input_shape[0]} channel(s); the model takes {fixed[0]}")
    if loaded is None:
        loaded = prepare_model(cfg, num_classes=ds.num_classes, in_channels=ds.input_shape[0], model=model)
    if loaded.num_classes is not None and ds.num_classes > loaded.num_classes:
        raise QuantbenchError(f"{cfg.data}: {ds.num_classes} classes, but model {loaded.source} outputs only "
                              f"{loaded.num_classes}")
    for note in loaded.notes:
        (log or (lambda m: None))(f"model: {note}")
    classes = loaded.num_classes or ds.num_classes
    if cfg.topk is not None and cfg.topk > classes:
        raise QuantbenchError(f"config: topk {cfg.topk} exceeds the {classes} classes of the model and data; "
                              "top-k would be 100% by construction")
    out = Prepared(loaded, loaded.module, ds, ds, topk=cfg.topk or min(5, classes))
    rest = ds
    seed = cfg.seed
    if train:
        if getattr(cfg, "train_data", None):
            out.train = _open(cfg.train_data, cfg, size or (ds.input_shape[1], ds.input_shape[2]))
            if tuple(out.train.input_shape) != tuple(ds.input_shape):
                raise QuantbenchError(f"{cfg.train_data}: images are {out.train.input_shape}, {cfg.data} has "
                                      f"{ds.input_shape}")
            out.split["train"] = f"all {len(out.train)} images of {cfg.train_data}"
            if val_fraction:
                parts = split_dataset(ds, {"val": val_fraction, "test": 1.0 - val_fraction}, seed=seed)
                out.val, rest = parts["val"], parts["test"]
        else:
            frac = cfg.train_fraction
            roles = {"train": frac, "test": 1.0 - frac - val_fraction}
            if val_fraction:
                roles["val"] = val_fraction
            if roles["test"] <= 0:
                raise QuantbenchError(f"config: train_fraction {frac} leaves no evaluation images")
            parts = split_dataset(ds, roles, seed=seed)
            out.train, out.val, rest = parts["train"], parts.get("val"), parts["test"]
            out.split["train"] = (f"{len(out.train)} images of {cfg.data} ({frac:.0%}, stratified, seed {seed})")
    if calib:
        n = cfg.calib_size
        if getattr(cfg, "calib", None):
            calib_ds = _open(cfg.calib, cfg, size or (ds.input_shape[1], ds.input_shape[2]))
            if len(calib_ds) < n:
                raise QuantbenchError(f"{cfg.calib}: calibration set has {len(calib_ds)} images, fewer than "
                                      f"calib_size {n}")
            out.calib = subset(calib_ds, n, seed=seed)
            out.split["calib"] = f"{n} images of {cfg.calib}"
        elif out.train is not None:
            if len(out.train) < n:
                raise QuantbenchError(f"the training split has {len(out.train)} images, fewer than calib_size {n}; "
                                      "lower --calib-size or pass --calib SPEC")
            out.calib = subset(out.train, n, seed=seed)
            out.split["calib"] = f"{n} of the training images"
        else:
            if len(rest) <= n:
                raise QuantbenchError(f"{cfg.data}: {len(rest)} images cannot give {n} calibration images and a "
                                      "disjoint evaluation split; lower --calib-size or pass --calib SPEC")
            parts = split_dataset(rest, {"calib": n / len(rest), "test": 1.0 - n / len(rest)}, seed=seed)
            out.calib, rest = parts["calib"], parts["test"]
            out.split["calib"] = f"{len(out.calib)} images of {cfg.data} (stratified, seed {seed})"
    if val_fraction and out.val is None:  # no training split to take it from: a share of what is left
        if len(rest) < 4:
            raise QuantbenchError(f"{cfg.data}: {len(rest)} images cannot give a validation and an evaluation split")
        parts = split_dataset(rest, {"val": val_fraction, "test": 1.0 - val_fraction}, seed=seed)
        out.val, rest = parts["val"], parts["test"]
    if out.val is not None:
        out.split["val"] = f"{len(out.val)} images of {cfg.data} for validation (stratified, seed {seed}; disjoint from evaluation)"
    if cfg.eval_size is not None and cfg.eval_size < len(rest):
        from quantbench.data.splits import DatasetView

        rest = DatasetView(rest, list(range(cfg.eval_size)), name="test")
    out.test = rest
    out.split["eval"] = (f"all {len(rest)} images of {cfg.data}" if rest is ds
                         else f"{len(rest)} other images of {cfg.data}")
    return out
