"""``train``: train a model in FP32; saves the checkpoint, history, accuracy and costs.

Example:
    >>> from quantbench.experiments.layer import config_for, run_experiment
    >>> cfg = config_for("train", {"epochs": 1, "no_store": True})
    >>> run_experiment(cfg, progress=False, log=lambda m: None).record["epochs"]
    1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbench.config import option
from quantbench.experiments.layer import Context, register_kind
from quantbench.experiments.options import DataOptions, Fitting, Timing, TrainingData


@dataclass(frozen=True)
class TrainConfig(Timing, Fitting, TrainingData, DataOptions):
    """FP32 training: ``train_fraction`` of the data trains, ``val_fraction`` validates each epoch, the rest evaluates."""

    train_fraction: float = option(0.7, "share of --data used for training when --train-data is not given",
                                   gt=0, le=0.95)
    val_fraction: float = option(0.1, "share of --data evaluated after every epoch (0: none)", ge=0, le=0.5)


def train_stage(cfg: Any, ctx: Context) -> tuple[Any, Any, Any, Any]:
    """Prepare, train (no cache: this training IS the experiment), evaluate FP32 and its costs.

    Returns (prepared, history, fp32 evaluation, train subset); shared with ``run``.
    """
    from quantbench.experiments.prepare import prepare
    from quantbench.experiments.records import history_rows
    from quantbench.experiments.stages import fp32_baseline, pretrain, train_eval_subset

    p = prepare(cfg, ctx, train=cfg.epochs > 0, calib=bool(getattr(cfg, "methods", ())),
                val_fraction=cfg.val_fraction if cfg.epochs > 0 else 0.0)
    ctx.log(f"data: {cfg.data} ({len(p.ds)} images, {p.ds.num_classes} classes, input "
            f"{'x'.join(map(str, p.input_shape))}); " + "; ".join(f"{k}: {v}" for k, v in p.split.items()))
    hist = None
    if cfg.epochs > 0:
        ctx.log(f"train: {p.loaded.label}, {cfg.epochs} epochs on {len(p.train)} images")
        hist = pretrain(p.model, p.train, p.val, cfg, out_dir=ctx.out_dir, epochs=cfg.epochs, lr=cfg.lr,
                        fit_cfg=cfg.fit_config(), progress=ctx.progress,
                        checkpoint_path=ctx.out_dir / "model_fp32.pt", cache=False)
        ctx.commit(history_rows(p.key, hist))
    p.model.eval()
    train_eval = train_eval_subset(p.train, p.test)
    ev = fp32_baseline(p, cfg, ctx, train_eval=train_eval)
    return p, hist, ev, train_eval


def train_model(cfg: TrainConfig, ctx: Context) -> dict[str, Any]:
    p, hist, ev, _ = train_stage(cfg, ctx)
    return {"model": p.loaded.label, "data": cfg.data, "split": p.split, "epochs": len(hist.epochs) if hist else 0,
            "train_time_s": hist.wall_s if hist else 0.0, "history": [dict(e) for e in hist.epochs] if hist else [],
            "checkpoint": str(ctx.out_dir / "model_fp32.pt"), "n_images": ev.n_images, **ev.as_dict()}


register_kind("train", TrainConfig, train_model, "train a model in FP32; saves the checkpoint and history")
