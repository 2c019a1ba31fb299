"""``recommend``: a bounded search over the PTQ methods that matter, deployed on every engine here, answered in words.

Candidates: each of ``methods`` (default W8A8 with the default observer, W8A8 with bias correction,
W4A8 AdaRound); W8A8 under accuracy control when full W8A8 misses ``max_drop`` on the validation
images; mixed precision under ``budget_kb`` when given. Every candidate is evaluated on the
validation split (for choosing) and on evaluation images no choice saw (for the answer), saved
packed, and timed with its own scales on every engine that deploys INT8 here, beside FP32 on
every engine. The answer (see :func:`quantbench.experiments.recommend.compose_answer`) is stored
as the run's ``answer`` row, so its report opens with it.

Example:
    >>> from quantbench.experiments.layer import config_for
    >>> config_for("recommend", {"model": "resnet20", "max_drop": 0.5}).methods
    ('w8a8:mse', 'w8a8:mse-bc', 'w4a8:adaround')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from quantbench.config import option
from quantbench.errors import QuantbenchError
from quantbench.experiments.kinds.ptq import AdaRoundOptions
from quantbench.experiments.layer import Context, register_kind
from quantbench.experiments.options import (
    AccuracyControl,
    Calibration,
    DataOptions,
    Pretraining,
    Timing,
    TrainingData,
    WeightRange,
)

_COST_METRICS = {"params", "size_bytes", "macs", "flops", "macs_batch"}


@dataclass(frozen=True)
class RecommendExperiment(WeightRange, Timing, AccuracyControl, AdaRoundOptions, Pretraining, Calibration,
                          TrainingData, DataOptions):
    """Which quantized deployment to use here: candidates x engines, measured, with the answer in words."""

    max_drop: float = option(1.0, "largest acceptable top-1 drop vs FP32 in points (one-sided upper bound on the "
                             "validation split); also the target of accuracy control", ge=0, metavar="POINTS")
    methods: tuple[str, ...] = option(("w8a8:mse", "w8a8:mse-bc", "w4a8:adaround"), "PTQ methods to try, "
                                      "comma-separated SCHEME:ALGO", metavar="M1,M2")
    control_method: str = option("w8a8:mse", "the method accuracy control starts from when it misses max_drop "
                                 "(none: no accuracy control)")
    budget_kb: float | None = option(None, "also try mixed-precision weights under this file size (1 KB = 1000 "
                                     "bytes)", gt=0, metavar="KB")
    engines: tuple[str, ...] = option(("all",), "engines, comma-separated, or all (see `quantbench engines`)",
                                      metavar="all|LIST")
    batch_sizes: tuple[int, ...] = option((1, 8), "batch sizes to time; the answer is given at the first",
                                          metavar="B1,B2", ge=1)
    rounds: int = option(3, "timing rounds, each deployment in a fresh process per round, order alternating; "
                         "medians' intervals span the rounds (processes minutes apart differ by more than one "
                         "process's interval)", ge=1)

    def check(self) -> None:
        from quantbench.experiments.bench import plan_jobs
        from quantbench.quant.ptq import parse_method

        if not self.methods and self.control_method == "none" and self.budget_kb is None:
            raise QuantbenchError("config: methods is empty and there is no accuracy control or budget: nothing to try")
        for m in (*self.methods, *([self.control_method] if self.control_method != "none" else [])):
            if parse_method(m).plan().is_fp32:
                raise QuantbenchError(f"config: method {m!r} quantizes nothing; expected a quantized method")
        if not self.batch_sizes:
            raise QuantbenchError("config: batch_sizes needs at least one batch size")
        jobs, _ = plan_jobs(self.engines, ())
        if not any(v == "int8" for _, v in jobs):
            raise QuantbenchError(f"config: none of the engines {', '.join(self.engines)} deploys int8 here; "
                                  "see `quantbench engines`")


def _candidate(outcome: Any, p: Any, cfg: Any, fp32_val: Any, ctx: Context, notes: list[str] | None = None,
               commit: bool = True) -> Any:
    """A :class:`Candidate` from a recorded quantized model: its validation drop (for choosing) committed too."""
    from quantbench.experiments.recommend import Candidate
    from quantbench.measure.accuracy import evaluate
    from quantbench.quant.accuracy_control import upper_drop_bound

    label = outcome.record["method"]
    ev = evaluate(outcome.model, p.val, topk=(1,), batch_size=cfg.eval_batch_size)
    bound, paired = upper_drop_bound(fp32_val.correct, ev.correct, cfg.confidence)
    key = dataclasses.replace(p.key, method=label)
    val_row = key.row("val_top1_drop_upper", bound, "points", drop_points=-paired.diff_points, split="val",
                      n_images=ev.n_images, confidence=cfg.confidence)
    ctx.commit((outcome.rows if commit else []) + [val_row])
    d = outcome.record["drop"]
    return Candidate(label, outcome.record["quant"]["size_bytes"], val_drop=-paired.diff_points, val_upper=bound,
                     test_drop=d["top1_points"], test_ci=(d["ci_low"], d["ci_high"]), test_n=outcome.eval.n_images, notes=list(notes or []), eligible=bound <= cfg.max_drop,
                     model=outcome.model, artifact=outcome.record["quant"]["artifact"])


def _candidates(p: Any, cfg: RecommendExperiment, fp32: Any, fp32_val: Any, ctx: Context) -> list[Any]:
    from quantbench.experiments.controlled import controlled_ptq
    from quantbench.experiments.ptq import run_ptq
    from quantbench.experiments.recommend import Candidate
    from quantbench.quant.ptq import parse_method

    size = (ctx.out_dir / "model_fp32.pt").stat().st_size
    cands = [Candidate("fp32", size, test_n=fp32.n_images)]
    kw = {**p.rebuild_info(), "topk": p.topk, "eval_batch_size": cfg.eval_batch_size, "progress": ctx.progress,
          "log": ctx.log}
    n_calib = len(p.calib)
    steps = len(cfg.methods) + (cfg.control_method != "none") + (cfg.budget_kb is not None)
    for i, method in enumerate(cfg.methods, 1):
        ctx.log(f"recommend: [{i}/{steps}] {method}")
        ptq = cfg.with_weight_range(parse_method(method, calib_size=n_calib, adaround_iters=cfg.adaround_iters))
        out = run_ptq(p.model, ptq, p.calib, p.test, p.key, fp32, ctx.out_dir, **kw)
        cands.append(_candidate(out, p, cfg, fp32_val, ctx))
    if cfg.control_method != "none":
        ptq = cfg.with_weight_range(parse_method(cfg.control_method, calib_size=n_calib,
                                                 adaround_iters=cfg.adaround_iters))
        base = next((c for c in cands if c.label == ptq.label()), None)
        if base is not None and base.eligible:
            ctx.log(f"recommend: [{len(cfg.methods) + 1}/{steps}] accuracy control not needed: {base.label} is within "
                    f"{cfg.max_drop:g} points on the validation images")
        else:
            ctx.log(f"recommend: [{len(cfg.methods) + 1}/{steps}] accuracy control from {ptq.label()}")
            out = controlled_ptq(p, cfg, ptq, fp32, ctx, fp32_val=fp32_val)
            ac = out.record["accuracy_control"]
            note = (f"Accuracy control kept {len(ac['float_layers'])} layer(s) in float "
                    f"({ac['float_macs_share']:.0%} of the MACs): {', '.join(ac['float_layers'])}."
                    if ac["float_layers"] else "")
            cands.append(_candidate(out, p, cfg, fp32_val, ctx, notes=[note] if note else []))
    if cfg.budget_kb is not None:
        from quantbench.experiments.kinds.mixed import quantize_mixed

        ctx.log(f"recommend: [{steps}/{steps}] mixed precision under {cfg.budget_kb:g} KB")
        uniform = cfg.with_weight_range(parse_method(
            cfg.control_method if cfg.control_method != "none" else "w8a8:mse", calib_size=n_calib))
        try:
            mixed, _, _ = quantize_mixed(p, uniform, fp32, ctx, budget={"budget_bytes": int(cfg.budget_kb * 1000)},
                                         bits=(2, 3, 4, 5, 6, 8), metric="mse", eval_batch_size=cfg.eval_batch_size)
        except QuantbenchError as exc:  # an unreachable budget is an answer, not a crash
            ctx.log(f"recommend: mixed precision skipped: {exc}")
        else:
            cands.append(_candidate(mixed, p, cfg, fp32_val, ctx, commit=False))
    return cands


def _time(p: Any, cfg: RecommendExperiment, cands: list[Any], ctx: Context) -> tuple[list[Any], list[dict[str, str]]]:
    """Every candidate on every engine that deploys it here (FP32 on every engine); rows committed."""
    from quantbench.experiments.bench import BenchSpec, bench_rows, plan_jobs, run_bench
    from quantbench.experiments.recommend import Deployment, merge_rounds

    jobs, _ = plan_jobs(cfg.engines, ())
    fp32_engines = tuple(dict.fromkeys(e for e, v in jobs if v == "fp32"))
    int8_engines = tuple(dict.fromkeys(e for e, v in jobs if v == "int8"))
    # One fresh process per engine, as `bench` does by default: in one process, an engine's idle thread
    # pool steals cycles from the next one's (an OpenVINO FP32 median doubled beside ONNX Runtime's
    # spinning threads), and the machine-load check cannot see it. The worker rebuilds the float model
    # from its source and the weights this run evaluated; an in-memory model (the Python API) cannot be
    # rebuilt there and is timed in this process.
    state_dict_kinds = ("zoo", "python", "torchvision", "timm")
    isolate = ctx.model is None and (p.loaded.kind in state_dict_kinds or cfg.pretrain_epochs == 0)
    spec = BenchSpec(model=p.loaded.source if isolate else p.loaded.label,
                     checkpoint=str(ctx.out_dir / "model_fp32.pt") if isolate and p.loaded.kind in state_dict_kinds
                     else None, hyper=dict(p.loaded.hyper), num_classes=p.loaded.num_classes or p.ds.num_classes,
                     engines=fp32_engines, variants=("fp32",), batch_sizes=cfg.batch_sizes,
                     input_shape=p.input_shape, threads=cfg.threads, warmup=cfg.warmup, min_iters=cfg.min_iters,
                     min_time_s=cfg.min_time_s, isolate=isolate)
    model = None if isolate else p.model
    log = ctx.log if ctx.progress else (lambda m: None)
    deployments: list[Any] = []
    skipped: list[dict[str, str]] = []
    results: dict[str, list[Any]] = {c.label: [] for c in cands}
    for rnd in range(cfg.rounds):
        for c in (cands if rnd % 2 == 0 else cands[::-1]):  # alternate: no candidate is always timed first
            where = f" (round {rnd + 1}/{cfg.rounds})" if cfg.rounds > 1 else ""
            if c.is_fp32:
                ctx.log(f"recommend: timing FP32 on {', '.join(fp32_engines)}{where}")
                res = run_bench(spec, model=model, log=log, peaks=False)
            else:
                ctx.log(f"recommend: timing {c.label} on {', '.join(int8_engines)}{where}")
                cspec = dataclasses.replace(spec, engines=int8_engines, variants=("int8",), reference=False,
                                            quantized=c.artifact if isolate else None)
                res = run_bench(cspec, model=model, quantized=None if isolate else c.model, log=log, peaks=False)
            results[c.label].append(res)
    for c in cands:
        runs = results[c.label]
        res = dataclasses.replace(runs[0], records=merge_rounds([r.records for r in runs]))
        # FP32's costs are already stored; a candidate run's FP32 cells belong to the FP32 run
        keep = (lambda r: r.metric not in _COST_METRICS) if c.is_fp32 else (lambda r: r.method == "int8")
        ctx.commit([dataclasses.replace(r, model=p.key.model, method=c.label if r.method == "int8" else r.method)
                    for r in bench_rows(res, p.key.data) if keep(r)])
        skipped += [{**s, "method": c.label} for s in runs[0].skipped]
        for r in res.records:
            if c.is_fp32 != (r["variant"] == "fp32"):
                continue
            deployments.append(Deployment(c.label, r["engine"], r["variant"], r["batch"], r["median_ms"],
                                          r["median_ci_low_ms"], r["median_ci_high_ms"], r["p90_ms"],
                                          r["other_cpu_share"], tuple(r["round_medians_ms"])))
    return deployments, skipped


def recommend_model(cfg: RecommendExperiment, ctx: Context) -> dict[str, Any]:
    from quantbench.experiments.controlled import check_provable, val_share
    from quantbench.experiments.prepare import prepare
    from quantbench.experiments.recommend import compose_answer, cpu_summary, pareto_rows
    from quantbench.experiments.stages import pretrained_baseline
    from quantbench.measure.accuracy import evaluate
    from quantbench.measure.environment import environment
    from quantbench.measure.latency import busy_shares

    training = cfg.pretrain_epochs > 0
    p = prepare(cfg, ctx, train=training, calib=True, val_fraction=val_share(cfg, training))
    check_provable(p, cfg)
    # FP32 is timed with the candidates on every engine below, not a second time as eager PyTorch here
    _, fp32, _ = pretrained_baseline(p, dataclasses.replace(cfg, batch_sizes=()), ctx)
    fp32_val = evaluate(p.model, p.val, topk=(1,), batch_size=cfg.eval_batch_size)
    cands = _candidates(p, cfg, fp32, fp32_val, ctx)
    deployments, skipped = _time(p, cfg, cands, ctx)
    busy = busy_shares([d.other_cpu_share for d in deployments])
    machine = cpu_summary(environment())
    said = compose_answer(cands, deployments, machine=machine, batch=cfg.batch_sizes[0], max_drop=cfg.max_drop,
                          busy=busy)
    header, body = pareto_rows(cands, deployments, cfg.batch_sizes)
    pareto = {"title": f"Every deployment measured (* = on the Pareto front of drop, size and latency at batch "
                       f"{cfg.batch_sizes[0]})", "header": header, "rows": body}
    ctx.commit([p.key.row("answer", None, "text", lines=said["answer"] + said["avoid"], choice=said["choice"],
                          table=pareto)])
    return {"model": p.loaded.label, "data": cfg.data, "split": p.split, "machine": machine,
            "answer": said["answer"], "avoid": said["avoid"], "choice": said["choice"],
            "table": {"header": header, "rows": body}, "candidates": [c.public() for c in cands],
            "deployments": [dataclasses.asdict(d) for d in deployments], "skipped": skipped,
            "busy": busy, "max_drop": cfg.max_drop, "batch": cfg.batch_sizes[0]}


register_kind("recommend", RecommendExperiment, recommend_model,
              "which quantized deployment to use here: PTQ methods x engines, measured, answered in words")
