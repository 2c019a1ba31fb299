"""The training loop shared by FP32 training and (later) quantization-aware training.

One loop for both so that QAT-vs-FP32 comparisons (accuracy, wall-clock time) differ only
in the model being trained. Seeded and deterministic on CPU: the shuffling order comes from
a private ``torch.Generator`` and the model's initialisation from ``cfg.seed``.

Example:
    >>> history = fit(model, train_ds, val_ds, TrainConfig(epochs=2))  # doctest: +SKIP
    >>> history.epochs[-1]["val_top1"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbench.config import TrainConfig
from quantbench.measure.accuracy import evaluate
from quantbench.paths import torch_save_atomic


@dataclass
class History:
    """Per-epoch record of a training run; ``wall_s`` is the total training time."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _all_tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialise a data set as (images, labels); small data sets train much faster this way."""
    if hasattr(data, "tensors"):
        x, y = data.tensors()
        return x, torch.as_tensor(y, dtype=torch.long)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data[0], torch.as_tensor(data[1], dtype=torch.long)
    xs, ys = zip(*(data[i] for i in range(len(data))), strict=True)
    return torch.stack(list(xs)), torch.as_tensor(ys, dtype=torch.long)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW; no weight decay on BN/bias parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Cosine decay from ``cfg.lr`` to 0 over all steps, or constant."""
    if cfg.schedule == "constant" or total_steps <= 1:
        return cfg.lr
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * step / total_steps))


def fit(
    model: nn.Module,
    train_data: Any,
    val_data: Any | None,
    cfg: TrainConfig,
    *,
    progress: bool = False,
    checkpoint_path: str | Path | None = None,
    topk: int = 5,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> History:
    """Train ``model`` in place on ``train_data``; evaluate on ``val_data`` after every epoch.

    Args:
        model: any ``nn.Module`` mapping images to logits.
        train_data: a data set with ``tensors()`` (fast path) or ``(image, label)`` items.
        val_data: optional held-out data, evaluated each epoch (loss, top-1, top-k).
        cfg: epochs, batch size, optimiser, learning rate, schedule, seed.
        progress: show a tqdm bar per epoch on stderr.
        checkpoint_path: if given, the state dict is saved there after every epoch.
        topk: the k of the top-k accuracy recorded in the history.
        on_epoch: callback receiving each epoch's record (e.g. to stream to a store).

    Returns:
        The :class:`History` (per-epoch train/val loss and accuracy, lr, seconds; total wall time).
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = _all_tensors(train_data)
    n = len(y)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    opt = make_optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history = History(config=asdict(cfg))
    step = 0
    t_start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        batches = range(steps_per_epoch)
        if progress:
            from quantbench.progress import bar

            batches = bar(batches, desc=f"train epoch {epoch}/{cfg.epochs}", unit="batch")
        for b in batches:
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if len(idx) < 2 and n >= 2:  # BatchNorm cannot train on one sample
                continue
            xb, yb = x[idx], y[idx]
            lr = lr_at(cfg, step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((out.detach().argmax(1) == yb).sum())
            seen += len(yb)
        record: dict[str, float] = {
            "epoch": epoch,
            "lr": lr_at(cfg, step, total),
            "train_loss": loss_sum / max(seen, 1),
            "train_top1": 100.0 * correct / max(seen, 1),
        }
        if val_data is not None and len(val_data) > 0:
            ev = evaluate(model, val_data, topk=(1, topk))
            record.update(val_loss=ev.loss, val_top1=ev.top1, val_topk=ev.topk.get(topk, ev.top1))
        record["seconds"] = time.perf_counter() - t0
        history.epochs.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if checkpoint_path is not None:  # replaced whole, never written through (a crash keeps the last epoch's)
            torch_save_atomic(model.state_dict(), checkpoint_path)
    history.wall_s = time.perf_counter() - t_start
    model.eval()
    return history
