"""Stages several kinds share: FP32 training (cached), the FP32 baseline rows, a quantized variant's extra rows.

Written once here so that ``run``, ``train``, ``ptq``, ``qat``, ``mixed`` and ``split`` - as verbs,
sweep cells or API calls - produce the same rows the same way.

Example:
    >>> hist = pretrain(model, train_split, cfg, cache_dir=None)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbench.errors import QuantbenchError
from quantbench.experiments.records import TRAIN_PREFIX, RowKey, accuracy_rows, cost_rows, latency_rows
from quantbench.measure.accuracy import EvalResult, evaluate
from quantbench.paths import link_identical, torch_save_atomic
from quantbench.store import Result

__all__ = ["fp32_baseline", "int8_latency_rows", "pretrain", "pretrained_baseline", "train_eval_subset",
           "variant_rows"]


def pretrain(model: nn.Module, train: Any, val: Any, cfg: Any, *, out_dir: Path, epochs: int, lr: float,
             fit_cfg: Any = None, progress: bool = False, checkpoint_path: Path | None = None,
             cache: bool = True) -> Any:
    """Train the FP32 ``model`` in place; returns its history (None when ``epochs`` is 0).

    Runs with identical training settings share one trained model: the first saves its weights and
    history to ``<out_dir>/../_pretrained/<key>.pt`` (atomically), later ones load them
    (``weights_only``). The key hashes everything that shapes the training - model source,
    hyper-parameters, checkpoint (path, size, mtime), data and preprocessing, split, seed and the
    loop's settings - and the quantbench version. A cached file that does not load is named and
    rebuilt. The torch RNG is reseeded afterwards, so what follows does not depend on whether
    training ran here.
    """
    from quantbench import __version__
    from quantbench.config import TrainConfig
    from quantbench.train import fit
    from quantbench.train.loop import History

    if epochs <= 0:
        return None
    fit_cfg = fit_cfg or TrainConfig(epochs=epochs, lr=lr, seed=cfg.seed)
    fit_cfg = dataclasses.replace(fit_cfg, epochs=epochs, lr=lr)
    ckpt = cfg.checkpoint
    stat = Path(ckpt).stat() if ckpt and Path(ckpt).is_file() else None
    what = {k: getattr(cfg, k, None) for k in ("model", "hyper", "num_classes", "input_shape", "data", "normalize",
                                               "seed", "train_data", "train_fraction")}
    what.update(checkpoint=[ckpt, stat.st_size, stat.st_mtime_ns] if stat else ckpt, loop=dataclasses.asdict(fit_cfg),
                val=val is not None and len(val), version=__version__)
    key = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = out_dir.parent / "_pretrained" / f"{key}.pt"
    hist = None
    if cache and path.is_file():
        try:
            blob = torch.load(path, weights_only=True)
            model.load_state_dict(blob["state_dict"])
            hist = History(**json.loads(blob["history"]))
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, never trusted
            hist = None
    if hist is None:
        hist = fit(model, train, val, fit_cfg, progress=progress, checkpoint_path=checkpoint_path)
        if cache:  # concurrent workers: the last complete file wins, never a partial one
            torch_save_atomic({"state_dict": model.state_dict(), "history": json.dumps(hist.as_dict(), default=str)},
                              path)
    elif checkpoint_path is not None:
        torch_save_atomic(model.state_dict(), checkpoint_path)
    torch.manual_seed(fit_cfg.seed + 1)
    return hist


def train_eval_subset(train: Any, test: Any) -> Any | None:
    """A fixed part of the training split for train-vs-test accuracy: its first ``len(test)`` images.

    The split's items are in a seeded random order, so this is a seeded random sample, the same
    for every variant of the run; capping it at the test size keeps the extra cost at one more
    test-sized evaluation per variant. None when there is no training split.
    """
    if train is None or len(train) == 0:
        return None
    from quantbench.data.splits import DatasetView

    return DatasetView(train, list(range(min(len(train), len(test)))), name="train")


def train_accuracy_rows(key: RowKey, model: nn.Module | None, train_eval: Any, topk: int,
                        batch_size: int) -> list[Result]:
    """Top-1/top-k and loss of ``model`` on the training subset (``train_top1``, ``train_loss`` ...)."""
    if train_eval is None or model is None:
        return []
    ev = evaluate(model, train_eval, topk=(1, topk), batch_size=batch_size, progress=False)
    return accuracy_rows(key, ev, "train", prefix=TRAIN_PREFIX)


def _latency(runner: Callable[[int], Any], cfg: Any) -> list[Any]:
    from quantbench.measure.latency import latency_vs_batch

    return latency_vs_batch(runner, cfg.batch_sizes, threads=cfg.threads, warmup=cfg.warmup, min_iters=cfg.min_iters,
                            min_time_s=cfg.min_time_s)


def fp32_baseline(p: Any, cfg: Any, ctx: Any, *, train_eval: Any = None, desc: str = "eval fp32") -> EvalResult:
    """FP32 accuracy (evaluation images, and ``train_*`` on ``train_eval``), parameters, bytes on disk,
    MACs/FLOPs and - when ``cfg.batch_sizes`` - eager latency vs batch; commits the rows."""
    from quantbench.measure.latency import torch_runner
    from quantbench.measure.macs import count_macs
    from quantbench.measure.params import count_parameters
    from quantbench.measure.size import save_fp32

    ev = evaluate(p.model, p.test, topk=(1, p.topk), batch_size=cfg.eval_batch_size,
                  progress=desc if ctx.progress else False)
    size = save_fp32(p.model, ctx.out_dir / "model_fp32.pt")
    # Sweep cells (and runs) beside this one that saved the same FP32 model share its bytes.
    link_identical(ctx.out_dir / "model_fp32.pt", sorted(ctx.out_dir.parent.glob("*/model_fp32.pt")))
    batches = tuple(getattr(cfg, "batch_sizes", ()) or ())
    rows = (accuracy_rows(p.key, ev, "test") + train_accuracy_rows(p.key, p.model, train_eval, p.topk, cfg.eval_batch_size)
            + cost_rows(p.key, params=count_parameters(p.model), size_bytes=size, size_file="model_fp32.pt",
                        macs=count_macs(p.model, p.input_shape), batch_sizes=batches))
    if batches:
        for lat in _latency(lambda b: torch_runner(p.model, p.input_shape, b), cfg):
            rows += latency_rows(p.key, lat)
    ctx.commit(rows)
    return ev


def pretrained_baseline(p: Any, cfg: Any, ctx: Any) -> tuple[Any, EvalResult, Any]:
    """``pretrain_epochs`` of FP32 training (cached; its history committed), then the FP32 baseline.

    Returns (history or None, FP32 evaluation, the training subset train-split accuracy uses).
    """
    from quantbench.experiments.records import history_rows

    hist = None
    if cfg.pretrain_epochs > 0:
        hist = pretrain(p.model, p.train, None, cfg, out_dir=ctx.out_dir, epochs=cfg.pretrain_epochs,
                        lr=cfg.pretrain_lr, progress=ctx.progress)
        ctx.commit(history_rows(p.key, hist))
    p.model.eval()
    train_eval = train_eval_subset(p.train, p.test)
    return hist, fp32_baseline(p, cfg, ctx, train_eval=train_eval), train_eval


def variant_rows(p: Any, cfg: Any, method: str, qm: Any, train_eval: Any, log: Callable[[str], None]) -> list[Result]:
    """What a quantized variant adds beside its test rows: train-split accuracy and, with
    ``cfg.batch_sizes``, its latency vs batch on ``torch-int8``."""
    vkey = dataclasses.replace(p.key, method=method)
    rows = train_accuracy_rows(vkey, qm, train_eval, p.topk, cfg.eval_batch_size)
    if getattr(cfg, "batch_sizes", ()):
        rows += int8_latency_rows(vkey, p.model, qm, p.input_shape, cfg, log)
    return rows


def int8_latency_rows(key: RowKey, float_model: nn.Module, qm: Any, input_shape: tuple[int, int, int], cfg: Any,
                      log: Callable[[str], None]) -> list[Result]:
    """Latency vs batch of a quantized variant deployed with its own scales on PyTorch's int8 CPU kernels.

    Rows carry ``engine="torch-int8"`` and the variant's label, so the report can join them with
    the variant's accuracy. Variants the engine cannot lower (e.g. 4-bit weights, dynamic
    activations) get no rows and one log line saying why: simulated fake-quant timings would be
    no deployment speed at all.
    """
    from quantbench.engines.base import Deployable, load_session

    try:
        sess = load_session("torch-int8", Deployable(float_model, qm, input_shape, name=key.method), "int8",
                            threads=cfg.threads)
        lats = _latency(sess.runner, cfg)
    except (QuantbenchError, NotImplementedError, RuntimeError) as exc:
        log(f"latency: {key.method} not timed on torch-int8 ({str(exc).splitlines()[0][:160]})")
        return []
    ikey = dataclasses.replace(key, engine="torch-int8")
    return [row for lat in lats for row in latency_rows(ikey, lat)]
