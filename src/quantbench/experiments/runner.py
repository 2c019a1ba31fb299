"""The experiment runner: config -> data -> model -> train -> measure -> store -> report.

Each stage commits its rows to the store as soon as it finishes, so a crash keeps what was
measured so far (the run is marked ``failed``). Later features (PTQ, engines, QAT) add
stages here that produce more rows for the same run.

Example:
    >>> outcome = run_experiment(from_dict({"train": {"epochs": 1}}))  # doctest: +SKIP
    >>> outcome.report_html  # doctest: +SKIP
    PosixPath('runs/20261123-101500-run-ab12cd/report.html')
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbench import config as config_mod
from quantbench.config import DataConfig, ExperimentConfig, MeasureConfig, ModelConfig
from quantbench.data import open_dataset, split_dataset
from quantbench.errors import QuantbenchError
from quantbench.experiments.ptq import parse_method, run_ptq
from quantbench.experiments.records import (
    TRAIN_PREFIX,
    RowKey,
    accuracy_rows,
    cost_rows,
    history_rows,
    latency_rows,
)
from quantbench.measure.accuracy import EvalResult, evaluate
from quantbench.measure.environment import environment
from quantbench.measure.latency import latency_vs_batch, torch_runner
from quantbench.measure.macs import count_macs
from quantbench.measure.params import count_parameters
from quantbench.measure.size import save_fp32
from quantbench.models import build_model, load_checkpoint
from quantbench.store import Result, ResultStore, new_run_id
from quantbench.train import History, fit


@dataclass
class Splits:
    """The roles one data spec plays in an experiment (disjoint, seeded, stratified)."""

    full: Any
    parts: dict[str, Any]

    def get(self, role: str) -> Any | None:
        return self.parts.get(role)


@dataclass
class RunOutcome:
    """What a run produced: its id and folder, all rows, and the artefacts the report needs."""

    run_id: str
    out_dir: Path
    results: list[Result] = field(default_factory=list)
    histories: dict[str, History] = field(default_factory=dict)
    report_html: Path | None = None
    report_md: Path | None = None


def prepare_data(cfg: DataConfig) -> Splits:
    """Open the data spec and split it into the configured roles."""
    ds = open_dataset(cfg.spec, normalize=cfg.normalize, resize=cfg.resize)
    return Splits(full=ds, parts=split_dataset(ds, dict(cfg.split), seed=cfg.seed))


def prepare_model(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build a zoo model sized for the data (classes, channels) and load its checkpoint if any."""
    model = build_model(
        cfg.name,
        num_classes=cfg.num_classes or num_classes,
        in_channels=cfg.in_channels or input_shape[0],
        **cfg.hyper,
    )
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint)
    return model.eval()


def measure_costs(key: RowKey, model: nn.Module, input_shape: tuple[int, int, int], m: MeasureConfig,
                  size_path: Path, *, latency: bool = True) -> list[Result]:
    """Params, FP32 bytes on disk, MACs/FLOPs and latency vs batch size for an eager torch model."""
    size = save_fp32(model, size_path)
    macs = count_macs(model, input_shape, batch_size=1)
    rows = cost_rows(key, params=count_parameters(model), size_bytes=size, size_file=size_path.name,
                     macs=macs, batch_sizes=m.batch_sizes)
    if latency:
        lats = latency_vs_batch(
            lambda b: torch_runner(model, input_shape, b),
            m.batch_sizes, threads=m.threads, warmup=m.warmup, min_iters=m.min_iters, min_time_s=m.min_time_s,
        )
        for lat in lats:
            rows += latency_rows(key, lat)
    return rows


class Stage:
    """Commit each stage's rows as it ends, so a crash keeps earlier stages."""

    def __init__(self, store: ResultStore, run_id: str, outcome: RunOutcome) -> None:
        self.store, self.run_id, self.outcome = store, run_id, outcome

    def commit(self, rows: list[Result]) -> None:
        self.store.add_results(self.run_id, rows)
        self.outcome.results.extend(rows)


def recorded_run(kind: str, config: dict[str, Any], *, store_path: str, out_root: str,
                 body: Callable[[Stage, Path], None], name: str | None = None,
                 out_dir: str | Path | None = None) -> RunOutcome:
    """Run ``body`` as one stored run: run row, rows per stage, results.json and the report.

    The run is marked ``finished`` or ``failed``; rows committed before a failure stay.
    """
    env = environment()
    store = ResultStore(store_path)
    run_id = new_run_id(kind)
    folder = Path(out_dir) if out_dir else Path(out_root) / run_id
    folder.mkdir(parents=True, exist_ok=True)
    store.start_run(kind, config=config, environment=env, name=name, run_id=run_id, out_dir=str(folder))
    outcome = RunOutcome(run_id=run_id, out_dir=folder)
    try:
        body(Stage(store, run_id, outcome), folder)
        store.finish_run(run_id, "finished")
    except BaseException:
        store.finish_run(run_id, "failed")
        raise
    finally:
        write_results_json(outcome, config, env)
        store.close()
    from quantbench.report import write_report

    outcome.report_html, outcome.report_md = write_report(store_path, run_id, folder)
    return outcome


def run_experiment(cfg: ExperimentConfig, *, progress: bool = True, kind: str = "run", latency: bool = True,
                   quantize: bool | None = None, log: Callable[[str], None] | None = None) -> RunOutcome:
    """Run the whole experiment described by ``cfg``; returns the outcome with report paths.

    ``latency=False`` skips the latency measurement and ``quantize=False`` the PTQ stage
    (``quantbench train`` needs neither). ``quantize=None`` follows the config.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))

    def body(stage: Stage, out_dir: Path) -> None:
        config_mod.save(cfg, out_dir / "config.yaml")
        _run_stages(cfg, stage, out_dir, progress, log, latency, quantize)

    return recorded_run(kind, config_mod.to_dict(cfg), store_path=cfg.store, out_root=cfg.out_dir, body=body,
                        name=cfg.name)


def _run_stages(cfg: ExperimentConfig, stage: Stage, out_dir: Path, progress: bool,
                log: Callable[[str], None], latency: bool, quantize: bool | None) -> None:
    splits = prepare_data(cfg.data)
    ds = splits.full
    log(f"data: {cfg.data.spec} ({len(ds)} images, {ds.num_classes} classes, input {ds.input_shape}); "
        + ", ".join(f"{k} {len(v)}" for k, v in splits.parts.items()))
    model = prepare_model(cfg.model, ds.input_shape, ds.num_classes)
    key = RowKey(model=cfg.model.name, data=cfg.data.spec)
    if cfg.train.epochs > 0:
        train_part = splits.get("train")
        if train_part is None:
            raise ValueError("data.split has no 'train' part but train.epochs > 0")
        log(f"train: {cfg.model.name}, {cfg.train.epochs} epochs on {len(train_part)} images")
        history = fit(model, train_part, splits.get("val"), cfg.train, progress=progress,
                      checkpoint_path=out_dir / "model_fp32.pt", topk=cfg.measure.topk)
        stage.outcome.histories["fp32"] = history
        stage.commit(history_rows(key, history))
    test = splits.get("test") or ds
    train_eval = train_eval_subset(splits, test)
    ev = evaluate_split(model, test, cfg.measure, progress, "eval fp32")
    stage.commit(accuracy_rows(key, ev, "test") + train_accuracy_rows(key, model, train_eval, cfg.measure))
    log("measure: params, size, MACs" + (", latency vs batch " + ",".join(map(str, cfg.measure.batch_sizes))
                                          if latency else ""))
    stage.commit(measure_costs(key, model, ds.input_shape, cfg.measure, out_dir / "model_fp32.pt", latency=latency))
    if quantize is False or (quantize is None and not cfg.quantize.methods):
        return
    calib = splits.get("calib")
    if calib is None:
        raise QuantbenchError("config: data.split needs a 'calib' part for post-training quantization")
    model_kwargs = {"num_classes": cfg.model.num_classes or ds.num_classes,
                    "in_channels": cfg.model.in_channels or ds.input_shape[0], **cfg.model.hyper}
    for method in cfg.quantize.methods:
        ptq_cfg = dataclasses.replace(parse_method(method), calib_size=min(cfg.quantize.calib_size, len(calib)),
                                      adaround_iters=cfg.quantize.adaround_iters)
        log(f"quantize: {ptq_cfg.label()} (calibration on {ptq_cfg.calib_size} images)")
        out = run_ptq(model, ptq_cfg, calib, test, key, ev, out_dir, model_name=cfg.model.name,
                      model_kwargs=model_kwargs, input_shape=ds.input_shape, topk=cfg.measure.topk,
                      eval_batch_size=cfg.measure.eval_batch_size,
                      sensitivity_images=cfg.quantize.sensitivity_images, progress=progress)
        stage.commit(out.rows + variant_rows(key, out.record["method"], model, out.model, train_eval, cfg.measure,
                                             ds.input_shape, latency=latency, log=log))
    _qat_stage(cfg, stage, out_dir, progress, log, model, splits, calib, test, key, ev, model_kwargs, ds.input_shape,
               train_eval, latency)


def _qat_stage(cfg: ExperimentConfig, stage: Stage, out_dir: Path, progress: bool, log: Callable[[str], None],
               model: nn.Module, splits: Splits, calib: Any, test: Any, key: RowKey, ev: EvalResult,
               model_kwargs: dict[str, Any], input_shape: tuple[int, int, int], train_eval: Any = None,
               latency: bool = False) -> None:
    """QAT rows: fine-tune each ``quantize.qat`` scheme from its MSE PTQ start on the train split.

    The PTQ start is recorded too (label ``<scheme>-mse-start``), so every QAT row has its
    PTQ counterpart; training time per epoch is compared with the FP32 training of this run.
    """
    q = cfg.quantize
    train_part = splits.get("train")
    if not q.qat or train_part is None:
        return
    from quantbench.experiments.qat import run_qat
    from quantbench.quant.qat import QATConfig

    fp32_epoch_s = None
    hist = stage.outcome.histories.get("fp32")
    if hist is not None and hist.epochs:
        fp32_epoch_s = hist.wall_s / len(hist.epochs)
    for scheme in q.qat:
        train_cfg = dataclasses.replace(cfg.train, epochs=q.qat_epochs, lr=q.qat_lr, optimizer="adamw",
                                        weight_decay=0.0, label_smoothing=0.0)
        qcfg = QATConfig(scheme=scheme, calib_size=min(q.calib_size, len(calib)), train=train_cfg)
        log(f"qat: {qcfg.label()} ({q.qat_epochs} epochs on {len(train_part)} images, from {scheme} MSE PTQ)")
        out = run_qat(model, qcfg, calib, train_part, test, key, ev, out_dir, model_name=cfg.model.name,
                      model_kwargs=model_kwargs, input_shape=input_shape, topk=cfg.measure.topk,
                      eval_batch_size=cfg.measure.eval_batch_size, progress=progress, fp32_epoch_s=fp32_epoch_s,
                      time_fp32=fp32_epoch_s is None, start_label=f"{scheme}-mse-start")
        stage.commit(out.rows + [row for part in (out.ptq, out.qat)
                                 for row in variant_rows(key, part.record["method"], model, part.model, train_eval,
                                                         cfg.measure, input_shape, latency=latency, log=log)])


def variant_rows(key: RowKey, method: str, float_model: nn.Module, qm: Any, train_eval: Any, m: MeasureConfig,
                 input_shape: tuple[int, int, int], *, latency: bool, log: Callable[[str], None]) -> list[Result]:
    """What a quantized variant adds beside its test rows: train-split accuracy and, with ``latency``,
    its latency vs batch on ``torch-int8`` (shared by ``run`` and the sweep cells)."""
    vkey = dataclasses.replace(key, method=method)
    rows = train_accuracy_rows(vkey, qm, train_eval, m)
    if latency:
        rows += int8_latency_rows(vkey, float_model, qm, input_shape, m, log)
    return rows


def train_eval_subset(splits: Splits, test: Any) -> Any | None:
    """A fixed part of the training split for train-vs-test accuracy: its first ``len(test)`` images.

    The split's items are in a seeded random order, so this is a seeded random sample, the
    same for every variant of the run; capping it at the test size keeps the extra cost at
    one more test-sized evaluation per variant. None when there is no training split.
    """
    train = splits.get("train")
    if train is None or len(train) == 0:
        return None
    from quantbench.data.splits import DatasetView

    return DatasetView(train, list(range(min(len(train), len(test)))), name="train")


def train_accuracy_rows(key: RowKey, model: nn.Module | None, train_eval: Any, m: MeasureConfig) -> list[Result]:
    """Top-1/top-k and loss of ``model`` on the training subset (``train_top1``, ``train_loss`` ...)."""
    if train_eval is None or model is None:
        return []
    with torch.inference_mode():
        ev = evaluate(model, train_eval, topk=(1, m.topk), batch_size=m.eval_batch_size, progress=False)
    return accuracy_rows(key, ev, "train", prefix=TRAIN_PREFIX)


def int8_latency_rows(key: RowKey, float_model: nn.Module, qm: Any, input_shape: tuple[int, int, int],
                      m: MeasureConfig, log: Callable[[str], None]) -> list[Result]:
    """Latency vs batch of a quantized variant deployed with its own scales on PyTorch's int8 CPU kernels.

    Rows carry ``engine="torch-int8"`` and the variant's label, so the report can join them with
    the variant's accuracy (accuracy vs latency). Variants the engine cannot lower (e.g. 4-bit
    weights, dynamic activations) get no rows and one log line saying why: simulated fake-quant
    timings would be no deployment speed at all.
    """
    from quantbench.engines.base import Deployable, load_session

    try:
        sess = load_session("torch-int8", Deployable(float_model, qm, input_shape, name=key.method), "int8",
                            threads=m.threads)
        lats = latency_vs_batch(sess.runner, m.batch_sizes, threads=m.threads, warmup=m.warmup, min_iters=m.min_iters,
                                min_time_s=m.min_time_s)
    except (QuantbenchError, NotImplementedError, RuntimeError) as exc:
        log(f"latency: {key.method} not timed on torch-int8 ({str(exc).splitlines()[0][:160]})")
        return []
    ikey = dataclasses.replace(key, engine="torch-int8")
    return [row for lat in lats for row in latency_rows(ikey, lat)]


def evaluate_split(model: nn.Module, data: Any, m: MeasureConfig, progress: bool, desc: str) -> EvalResult:
    """Top-1/top-k with CIs on one split (progress bar on stderr)."""
    with torch.inference_mode():
        return evaluate(model, data, topk=(1, m.topk), batch_size=m.eval_batch_size,
                        progress=desc if progress else False)


def write_results_json(outcome: RunOutcome, config: dict[str, Any], env: dict[str, Any]) -> Path:
    """``results.json``: the resolved config, environment and every row, in one file."""
    path = outcome.out_dir / "results.json"
    payload = {
        "run_id": outcome.run_id,
        "config": config,
        "environment": env,
        "results": [r.as_dict() for r in outcome.results],
    }
    path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    return path
