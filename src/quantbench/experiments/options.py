"""The option groups every experiment kind shares: where results go, which model, which data.

A concept is declared ONCE here, so it has the same key in YAML, the same flag on every verb
and the same default wherever it appears (``--threads``, ``--store``, ``--out``, ``--hyper``,
``--input-shape`` ...). Kinds (:mod:`quantbench.experiments.kinds`) inherit the groups they need
and add their own fields.

Example:
    >>> from quantbench.config import build
    >>> build(DataOptions, {"model": "resnet20", "input_shape": "3x32x32"}).input_shape
    (3, 32, 32)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.config import option
from quantbench.models.sources import SOURCE_FORMS

__all__ = ["AccuracyControl", "WeightRange", "BaseOptions", "Calibration", "ModelSource", "Normalize", "DataOptions", "Fitting", "ModelOptions", "Pretraining", "Timing",
           "TrainingData"]

DEFAULT_STORE = "runs/quantbench.db"


@dataclass(frozen=True)
class BaseOptions:
    """Every experiment: its name, where its rows and files go, its seed and threads."""

    name: str | None = option(None, "a name for this run in results and reports (default: derived)")
    store: str = option(DEFAULT_STORE, "SQLite results store", metavar="DB", path="file")
    out: str | None = option(None, "folder for this run's files and report (default runs/<run-id>)", metavar="DIR",
                             path="file")
    no_store: bool = option(False, "do not write this run to the results store (nothing stored, no report)")
    seed: int = option(0, "seed for data splits, initialisation and every random choice", ge=0)
    threads: int | None = option(None, "intra-op threads for inference and timing (default: all cores)", ge=1)


@dataclass(frozen=True)
class ModelSource:
    """Which model: a source string, its weights, its hyper-parameters and input shape."""

    model: str = option("lenet", f"model source: {SOURCE_FORMS}", metavar="SOURCE", path="model")
    checkpoint: str | None = option(None, "weights to load (torch.load with weights_only=True)", metavar="FILE",
                                    path="file")
    hyper: dict[str, Any] = option({}, "model hyper-parameters, e.g. --hyper alpha=0.5,divisor=8 (repeatable)",
                                   metavar="K=V,...")
    input_shape: tuple[int, int, int] | None = option(
        None, "input CxHxW (images are resized to HxW; default: the model's or the data's)", metavar="CxHxW")
    num_classes: int | None = option(None, "classifier outputs (default: the data's classes or the model's)", ge=1)


@dataclass(frozen=True)
class ModelOptions(ModelSource, BaseOptions):
    """An experiment on a model."""


@dataclass(frozen=True)
class Normalize:
    """How images become model inputs (every verb that reads images)."""

    normalize: str = option("auto", "normalisation: auto, imagenet, cifar, dataset, none, or MEAN/STD per "
                            "channel (e.g. 0.5,0.5,0.5/0.5,0.5,0.5)")


@dataclass(frozen=True)
class DataOptions(Normalize, ModelOptions):
    """Which images, and how they are normalised."""

    data: str = option("digits", "data spec KIND[:PATH] (see `quantbench datasets`)", metavar="SPEC", path="data")
    eval_size: int | None = option(None, "evaluate on at most N of the evaluation images", metavar="N", ge=1)
    eval_batch_size: int = option(256, "images per batch when evaluating accuracy", ge=1)
    topk: int | None = option(None, "top-k accuracy reported beside top-1 (default 5, or the number of classes "
                              "when fewer)", ge=1, le=1000)


@dataclass(frozen=True)
class TrainingData:
    """Where training/fine-tuning images come from (kinds that train)."""

    train_data: str | None = option(None, "separate training/fine-tuning images (default: a split of --data)",
                                    metavar="SPEC", path="data")
    train_fraction: float = option(0.8, "share of --data used for training/fine-tuning when --train-data is not "
                                   "given; the rest is evaluated", gt=0, le=0.95)


@dataclass(frozen=True)
class Calibration:
    """Where calibration images come from (kinds that quantize)."""

    calib: str | None = option(None, "separate calibration images (default: a subset of the training images, or "
                               "a disjoint split of --data)", metavar="SPEC", path="data")
    calib_size: int = option(512, "calibration images", metavar="N", ge=1)


@dataclass(frozen=True)
class Fitting:
    """The training loop's settings (FP32 training, QAT and fine-tuning share the loop)."""

    epochs: int = option(12, "training epochs", ge=0)
    batch_size: int = option(64, "training batch size", ge=1)
    optimizer: str = option("sgd", "optimizer", choices=("sgd", "adamw"))
    lr: float = option(0.05, "learning rate (cosine decay)", gt=0)
    momentum: float = option(0.9, "SGD momentum", ge=0, le=1)
    weight_decay: float = option(5e-4, "weight decay (not on biases and norms)", ge=0)
    schedule: str = option("cosine", "learning-rate schedule", choices=("cosine", "constant"))
    label_smoothing: float = option(0.0, "label smoothing", ge=0, le=0.5)

    def fit_config(self) -> Any:
        """The loop's :class:`~quantbench.config.TrainConfig` for these settings."""
        from quantbench.config import TrainConfig

        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                           momentum=self.momentum, weight_decay=self.weight_decay, schedule=self.schedule,
                           label_smoothing=self.label_smoothing, seed=getattr(self, "seed", 0))


@dataclass(frozen=True)
class Pretraining:
    """Train the FP32 model first (from its initialisation or checkpoint), before the experiment proper."""

    pretrain_epochs: int = option(0, "train the FP32 model for N epochs first (0: use it as loaded)", ge=0)
    pretrain_lr: float = option(0.05, "learning rate of that training (SGD, cosine)", gt=0)


@dataclass(frozen=True)
class Timing:
    """Latency vs batch size of the FP32 model and of each quantized one (torch-int8, their own scales)."""

    batch_sizes: tuple[int, ...] = option((), "time FP32 and INT8 (torch-int8) at these batch sizes, e.g. 1,8,32 "
                                          "(default: no timing)", metavar="B1,B2", ge=1)
    warmup: int = option(3, "untimed warm-up calls per batch size", ge=0)
    min_iters: int = option(10, "timed calls per batch size, at least", ge=1)
    min_time_s: float = option(0.3, "timed seconds per batch size, at least", gt=0)


@dataclass(frozen=True)
class AccuracyControl:
    """Keep the top-1 drop within a target, proven on validation images the evaluation never sees."""

    max_drop: float | None = option(None, "largest acceptable top-1 drop vs FP32, in points, proven by the one-sided "
                                    "upper confidence bound on the validation split (layers return to float, "
                                    "costliest first, until it holds)", ge=0, metavar="POINTS")
    confidence: float = option(0.95, "confidence of that bound", gt=0.5, le=0.999)
    val_fraction: float = option(0.3, "share of the images kept apart for choosing (accuracy control, "
                                 "recommendations); never evaluated", gt=0, le=0.8)
    max_float_layers: int | None = option(None, "return at most N layers to float (default: as many as needed)",
                                          ge=1, metavar="N")


@dataclass(frozen=True)
class WeightRange:
    """Which grid 8-bit weights use: the engines' fast u8 x s8 kernels saturate on x86 CPUs without VNNI."""

    weight_range: str = option("auto", "8-bit weight grid: auto (7-bit codes -64..63 where this CPU's int8 kernels "
                               "saturate: x86 without VNNI/AMX; the full grid elsewhere), full, reduced",
                               choices=("auto", "full", "reduced"))

    def with_weight_range(self, ptq: Any) -> Any:
        """``ptq`` (a PTQConfig) with this option applied (its label says ``reduced`` when taken)."""
        from quantbench.quant.ptq import resolve_weight_range

        return resolve_weight_range(ptq, self.weight_range)[0]

    def weight_range_note(self, method: str) -> str | None:
        """The line a run logs and records about ``method``'s weight grid; None where the grid cannot matter."""
        from quantbench.quant.ptq import parse_method, resolve_weight_range

        ptq = parse_method(method)
        if not ptq.plan().can_saturate:
            return None
        return f"weight range {resolve_weight_range(ptq, self.weight_range)[1]}"
