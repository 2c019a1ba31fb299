"""``quantbench <verb>``: parse -> config -> one library call -> records -> store.

``main(argv)`` is callable in-process (tests do). User errors print one line on stderr and
return exit code 2, without a traceback. With ``--json`` the last stdout line is one JSON
value (an object, or a list for verbs that produce several records).

Example:
    >>> main(["models"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from quantbench import __version__
from quantbench.errors import QuantbenchError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2 (argparse's own code, kept)."""

    def error(self, message: str) -> NoReturn:
        raise QuantbenchError(f"{self.prog}: {message}")


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return vals


def _add_experiment_args(p: argparse.ArgumentParser, *, training: bool = True) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML experiment file (flags below override it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=0.1 (repeatable)")
    p.add_argument("--model", help="zoo model name (see `quantbench models`)")
    p.add_argument("--checkpoint", metavar="FILE", help="weights to load (state dict or {'state_dict': ...})")
    p.add_argument("--data", metavar="SPEC", help="data set spec KIND[:PATH] (see `quantbench datasets`)")
    p.add_argument("--normalize", help="normalisation preset: auto, imagenet, cifar, dataset, none")
    p.add_argument("--resize", type=int, metavar="S", help="resize images to SxS")
    if training:
        p.add_argument("--epochs", type=int)
        p.add_argument("--batch-size", type=int)
        p.add_argument("--lr", type=float)
        p.add_argument("--optimizer", choices=["sgd", "adamw"])
        p.add_argument("--seed", type=int)
    p.add_argument("--batch-sizes", type=_csv_ints, metavar="B1,B2", help="batch sizes for latency, e.g. 1,8,32")
    p.add_argument("--threads", type=int, help="intra-op threads for latency measurement")
    p.add_argument("--store", metavar="DB", help="SQLite results file (default runs/quantbench.db)")
    p.add_argument("--out", metavar="DIR", help="folder for run folders (default runs)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last stdout line")


def _experiment_config(args: argparse.Namespace) -> Any:
    from quantbench import config as C

    cfg = C.load(args.config) if args.config else C.from_dict({})
    flags = {
        "model.name": args.model, "model.checkpoint": args.checkpoint, "data.spec": args.data,
        "data.normalize": args.normalize, "data.resize": args.resize,
        "train.epochs": getattr(args, "epochs", None), "train.batch_size": getattr(args, "batch_size", None),
        "train.lr": getattr(args, "lr", None), "train.optimizer": getattr(args, "optimizer", None),
        "train.seed": getattr(args, "seed", None), "data.seed": getattr(args, "seed", None),
        "measure.threads": args.threads, "store": args.store, "out_dir": args.out,
    }
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.batch_sizes:
        overrides.append("measure.batch_sizes=[" + ",".join(map(str, args.batch_sizes)) + "]")
    return C.apply_overrides(cfg, overrides + list(args.overrides))


def _print_table(header: Sequence[str], body: Sequence[Sequence[str]], out: Any = None) -> None:
    out = out or sys.stdout
    widths = [max(len(str(h)), *(len(str(r[i])) for r in body)) if body else len(str(h))
              for i, h in enumerate(header)]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in body:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)), file=out)


def _emit_json(obj: Any) -> None:
    print(json.dumps(obj, default=str))


# ----------------------------------------------------------------------------- verbs


def cmd_run(args: argparse.Namespace, *, kind: str = "run") -> int:
    from quantbench.experiments.runner import run_experiment
    from quantbench.report.tables import summary_table

    cfg = _experiment_config(args)
    outcome = run_experiment(cfg, progress=not args.no_progress, kind=kind, latency=(kind == "run"),
                             quantize=None if kind == "run" else False)
    rows = [dict(r.as_dict(), batch=r.batch) for r in outcome.results]
    if not args.json:
        print()
        _print_table(*summary_table(rows))
        print()
        if kind == "train":
            print(f"checkpoint: {outcome.out_dir / 'model_fp32.pt'}")
        print(f"results stored in {cfg.store} (run {outcome.run_id})")
        print(f"report: {outcome.report_html}")
    else:
        _emit_json({"run_id": outcome.run_id, "out_dir": str(outcome.out_dir), "report": str(outcome.report_html),
                    "checkpoint": str(outcome.out_dir / "model_fp32.pt"),
                    "results": [r.as_dict() for r in outcome.results]})
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from quantbench import config as C
    from quantbench.data import open_dataset
    from quantbench.experiments.records import RowKey, accuracy_rows
    from quantbench.experiments.runner import prepare_model
    from quantbench.measure.accuracy import evaluate
    from quantbench.measure.environment import environment
    from quantbench.store import ResultStore

    if not args.model or not args.data:
        raise QuantbenchError("eval: --model and --data are required")
    if args.batch_size <= 0:
        raise QuantbenchError(f"eval: --batch-size must be > 0, got {args.batch_size}")
    ds = open_dataset(args.data, normalize=args.normalize, resize=args.resize)
    model = prepare_model(C.ModelConfig(name=args.model, checkpoint=args.checkpoint), ds.input_shape, ds.num_classes)
    ev = evaluate(model, ds, topk=(1, args.topk), batch_size=args.batch_size,
                  progress=False if args.no_progress else f"eval {args.model}")
    key = RowKey(model=args.model, data=args.data)
    record = {"model": args.model, "checkpoint": args.checkpoint, "data": args.data, "n_images": ev.n_images,
              "normalization": getattr(ds, "normalization", None), **ev.as_dict()}
    for k, v in ev.topk.items():
        record[f"top{k}"] = v
    if not args.no_store:
        with ResultStore(args.store) as store:
            run_config = {"verb": "eval", "model": args.model, "checkpoint": args.checkpoint, "data": args.data,
                          "normalize": args.normalize, "resize": args.resize, "topk": args.topk}
            run_id = store.start_run("eval", config=run_config, environment=environment())
            store.add_results(run_id, accuracy_rows(key, ev, "all"))
            store.finish_run(run_id)
            record["run_id"] = run_id
    if args.json:
        _emit_json(record)
    else:
        lines = [f"{args.model} on {args.data}: {ev.n_images} images"]
        for k in sorted(ev.topk):
            lo, hi = ev.ci[k]
            lines.append(f"  top-{k}: {ev.topk[k]:.2f}%  (95% CI {lo:.2f}-{hi:.2f})")
        lines.append(f"  loss:  {ev.loss:.4f}")
        print("\n".join(lines))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from quantbench.models import MODELS, model_info
    from quantbench.models.summary import model_summary
    from quantbench.report.tables import human_count

    records = []
    for name in MODELS.names(args.pattern):
        info = model_info(name)
        records.append({"name": name, **info, **(model_summary(name) if not args.no_count else {})})
    if args.json:
        _emit_json(records)
        return 0
    header = ["model", "family", "input", "classes", "params", "MACs/image"]
    body = [[r["name"], str(r.get("family", "")), "x".join(map(str, r["input_shape"])), str(r["num_classes"]),
             human_count(r.get("params")), human_count(r.get("macs"))] for r in records]
    _print_table(header, body)
    print("\nMACs = multiply-accumulates of conv/linear layers at the default input, batch 1; FLOPs = 2 x MACs.")
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    from quantbench.engines import engine_status

    rows = engine_status()
    if args.json:
        _emit_json(rows)
        return 0
    body = []
    for r in rows:
        variants = ", ".join(v + (" (unsupported here)" if v in r["unsupported"] else "") for v in r["variants"])
        body.append([r["name"], "yes" if r["available"] else "no", variants, r["reason"] or ""])
        body += [["", "", f"  {v}: {why}", ""] for v, why in r["unsupported"].items()]
    _print_table(["engine", "available", "variants", "note"], body)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from quantbench.data import DATASETS

    records = [{"kind": n, **DATASETS.meta(n)} for n in DATASETS.names()]
    if args.json:
        _emit_json(records)
        return 0
    _print_table(["spec", "description"],
                 [[r["kind"] + (":PATH" if r.get("needs_path") else ""), r.get("description", "")] for r in records])
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantbench.store import ResultStore, export_rows

    if not Path(args.store).is_file():
        raise QuantbenchError(f"{args.store}: results database not found (run `quantbench run` first)")
    with ResultStore(args.store) as store:
        if args.runs:
            runs = store.runs()
            if args.format == "json" or args.json:
                _emit_json([{k: v for k, v in r.items() if k != "environment"} for r in runs])
            else:
                _print_table(["run id", "kind", "name", "status", "created"],
                             [[r["run_id"], r["kind"], r["name"] or "", r["status"], r["created"]] for r in runs])
            return 0
        rows = store.query(run_id=args.run, model=args.model, data=args.data, method=args.method,
                           engine=args.engine, metric=args.metric, batch=args.batch)
    fmt = "json" if args.json else args.format
    if fmt in ("csv", "json"):
        text = export_rows(rows, fmt)
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
            print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
        elif fmt == "json":
            print(json.dumps(rows, default=str))
        else:
            sys.stdout.write(text)
        return 0
    header = ["run", "model", "data", "method", "engine", "batch", "metric", "value", "unit"]
    body = [[r["run_id"][:26], r["model"], r["data"], r["method"], r["engine"],
             "" if r["batch"] is None else str(r["batch"]), r["metric"],
             "" if r["value"] is None else f"{r['value']:.6g}", r["unit"]] for r in rows]
    _print_table(header, body)
    print(f"\n{len(rows)} rows", file=sys.stderr)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantbench import config as C
    from quantbench.data import open_dataset, split_dataset, subset
    from quantbench.experiments.ptq import run_ptq
    from quantbench.experiments.records import RowKey, accuracy_rows, cost_rows
    from quantbench.experiments.runner import prepare_model, recorded_run
    from quantbench.measure.accuracy import evaluate
    from quantbench.measure.macs import count_macs
    from quantbench.measure.params import count_parameters
    from quantbench.measure.size import save_fp32
    from quantbench.quant.ptq import PTQConfig

    if args.calib_size <= 0:
        raise QuantbenchError(f"quantize: --calib-size must be > 0, got {args.calib_size}")
    ptq = PTQConfig(scheme=args.scheme, algo=args.algo, per_channel=not args.per_tensor, companding=args.companding,
                    mu=args.mu, first_last=args.first_last, calib_size=args.calib_size,
                    adaround_iters=args.adaround_iters,
                    equalize=True if args.equalize else None, bias_correction=True if args.bias_correction else None)
    ptq.plan()  # validates scheme, algorithm and options before any data is read
    ds = open_dataset(args.data, normalize=args.normalize, resize=args.resize)
    if args.calib:
        calib_ds = open_dataset(args.calib, normalize=args.normalize, resize=args.resize)
        if len(calib_ds) < args.calib_size:
            raise QuantbenchError(f"{args.calib}: calibration set has {len(calib_ds)} images, fewer than "
                                  f"--calib-size {args.calib_size}")
        calib, test = subset(calib_ds, args.calib_size, seed=args.seed), ds
    else:
        if len(ds) <= args.calib_size:
            raise QuantbenchError(f"{args.data}: {len(ds)} images cannot give {args.calib_size} calibration images "
                                  "and a disjoint evaluation split; lower --calib-size or pass --calib SPEC")
        frac = args.calib_size / len(ds)
        parts = split_dataset(ds, {"calib": frac, "test": 1.0 - frac}, seed=args.seed)
        calib, test = parts["calib"], parts["test"]
    model = prepare_model(C.ModelConfig(name=args.model, checkpoint=args.checkpoint), ds.input_shape,
                          ds.num_classes)
    model_kwargs = {"num_classes": ds.num_classes, "in_channels": ds.input_shape[0]}
    config = {"verb": "quantize", "model": {"name": args.model, "checkpoint": args.checkpoint},
              "data": {"spec": args.data, "calib": args.calib, "normalize": args.normalize, "resize": args.resize,
                       "seed": args.seed, "calib_images": len(calib), "eval_images": len(test)},
              "ptq": dataclasses.asdict(ptq)}
    key = RowKey(args.model, args.data)
    result: dict[str, Any] = {}

    def body(stage: Any, out_dir: Path) -> None:
        fp32 = evaluate(model, test, topk=(1, 5), progress=False if args.no_progress else "eval fp32")
        fp32_size = save_fp32(model, out_dir / "model_fp32.pt")
        macs = count_macs(model, ds.input_shape)
        stage.commit(accuracy_rows(key, fp32, "test") + cost_rows(
            key, params=count_parameters(model), size_bytes=fp32_size, size_file="model_fp32.pt", macs=macs))
        out = run_ptq(model, ptq, calib, test, key, fp32, out_dir, model_name=args.model, model_kwargs=model_kwargs,
                      input_shape=ds.input_shape, sensitivity_images=args.sensitivity_images,
                      progress=not args.no_progress)
        stage.commit(out.rows)
        result.update(out.record, n_images=fp32.n_images, calib_images=len(calib), model=args.model, data=args.data,
                      fp32={"top1": fp32.top1, "top5": fp32.topk.get(5), "ci": fp32.ci, "size_bytes": fp32_size,
                            "params": count_parameters(model), "macs": macs.per_image_macs})

    outcome = recorded_run("quantize", config, store_path=args.store, out_root=args.runs_dir, body=body,
                           name=f"quantize {args.model} {ptq.label()}", out_dir=args.out)
    result.update(run_id=outcome.run_id, report=str(outcome.report_html), out_dir=str(outcome.out_dir))
    if args.json:
        _emit_json(result)
        return 0
    fp, q, d = result["fp32"], result["quant"], result["drop"]
    print(f"{args.model} on {args.data}: calibrated on {len(calib)} images, evaluated on {result['n_images']}")
    _print_table(["variant", "top-1 %", "top-5 %", "size on disk", "drop vs FP32 (points, 95% CI)"], [
        ["fp32", f"{fp['top1']:.2f}", f"{fp['top5'] or 0:.2f}", f"{fp['size_bytes']:,} B", "–"],
        [result["method"], f"{q['top1']:.2f}", f"{q['top5'] or 0:.2f}", f"{q['size_bytes']:,} B",
         f"{d['top1_points']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] p={d['p_value']:.3g}"]])
    if result["layers"]:
        print("\nper-layer sensitivity (only that layer quantized):")
        _print_table(["layer", "type", "spec", "params", "SQNR dB", "top-1 %"],
                     [[r["layer"], r["kind"], r["spec"], str(r["params"]), f"{r['sqnr_db']:.1f}", f"{r['top1']:.2f}"]
                      for r in result["layers"]])
    print(f"\nquantized model: {q['artifact']}\nreport: {outcome.report_html}")
    return 0


def _csv_names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(v.strip() for v in text.split(",") if v.strip())


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantbench.experiments.bench import (
        BenchSpec,
        bench_rows,
        findings,
        load_study,
        public_record,
        run_bench,
        validate_spec,
    )
    from quantbench.experiments.runner import recorded_run
    from quantbench.report.tables import human_bytes

    engines, variants = _csv_names(args.engines), _csv_names(args.variants)
    if args.config:
        if args.model:
            raise QuantbenchError("bench: pass --model or --config, not both")
        study, specs = load_study(args.config, engines=engines, variants=variants, batch_sizes=args.batch_sizes,
                                  threads=args.threads, min_time_s=args.min_time,
                                  isolate=False if args.no_isolate else None)
    else:
        if not args.model:
            raise QuantbenchError("bench: --model is required (or --config FILE for a study of several models)")
        study = f"bench {args.model}"
        specs = [BenchSpec(model=args.model, checkpoint=args.checkpoint, quantized=args.quantized,
                           engines=engines or ("all",), variants=variants or (),
                           batch_sizes=args.batch_sizes or (1, 8, 32), input_size=args.input_size,
                           threads=args.threads, calib=args.calib, calib_size=args.calib_size,
                           min_time_s=args.min_time if args.min_time is not None else 1.0,
                           isolate=not args.no_isolate)]
    for spec in specs:  # every user mistake surfaces before minutes of timing
        validate_spec(spec)
    config = {"verb": "bench", "model": {"name": ", ".join(s.model for s in specs)},
              "data": {"spec": "seeded random input batches (timing only)"},
              "specs": [dataclasses.asdict(s) for s in specs]}
    results = []

    def body(stage: Any, out_dir: Path) -> None:
        for spec in specs:
            res = run_bench(spec, log=(lambda m: None) if args.no_progress else None)
            c, h, w = res.input_shape
            stage.commit(bench_rows(res, f"input:{c}x{h}x{w}"))
            results.append(res)

    outcome = recorded_run("bench", config, store_path=args.store, out_root=args.runs_dir, body=body,
                           name=study, out_dir=args.out)
    records = [r for res in results for r in res.records]
    if args.json:
        for res in results:
            for s in res.skipped:
                print(f"skipped {res.model} {s['engine']} {s['variant']}: {s['reason']}", file=sys.stderr)
        _emit_json([public_record(r) for r in records])
        return 0

    def fmt(v: float | None, f: str) -> str:
        return "–" if v is None else f.format(v)

    for res in results:
        c, h, w = res.input_shape
        print(f"\n{res.model} ({c}x{h}x{w}, {res.per_image_macs / 1e6:.1f} MMACs per image; int8 scales: "
              f"{res.quantized_from})")
        _print_table(
            ["engine", "variant", "batch", "median ms", "p90 ms", "images/s", "GMAC/s", "% of peak", "x fp32",
             "x torch fp32", "peak RSS"],
            [[r["engine"], r["variant"], str(r["batch"]), f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
              fmt(r["throughput_ips"], "{:.1f}"), fmt(r["gmacs_per_s"], "{:.1f}"),
              fmt(r["fraction_of_peak"] and 100 * r["fraction_of_peak"], "{:.0f}%"),
              fmt(r["speedup_vs_fp32"], "{:.2f}"), fmt(r["speedup_vs_torch_fp32"], "{:.2f}"),
              human_bytes(r["peak_rss_bytes"]) if r["peak_rss_bytes"] else "–"] for r in res.records])
        for s in res.skipped:
            print(f"  skipped {s['engine']} {s['variant']}: {s['reason']}")
    if results and results[0].peaks:
        print("\nmachine peaks (dense GEMM): " + ", ".join(
            f"{k} {v['gmacs_per_s']:.0f} GMAC/s" for k, v in results[0].peaks.items())
            + f" at {next(iter(results[0].peaks.values()))['threads']} thread(s)")
    lines = findings(records)
    if lines:
        print("\nfindings:")
        for line in lines:
            print(f"  - {line}")
    print(f"\nresults stored in {args.store} (run {outcome.run_id})\nreport: {outcome.report_html}")
    return 0


def _finetune_splits(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """(full data, calibration, fine-tuning, evaluation) images for qat/mixed, and how they were split.

    Without ``--train-data``: ``--data`` is split (stratified, seeded) into ``--train-fraction``
    for fine-tuning/calibration and the rest for evaluation. With it: fine-tune and calibrate
    on ``--train-data``, evaluate on all of ``--data``. Calibration images are a seeded subset
    of the fine-tuning images, never of the evaluation images.
    """
    from quantbench.data import open_dataset, split_dataset, subset

    if not 0 < args.train_fraction < 1:
        raise QuantbenchError(f"--train-fraction must be between 0 and 1, got {args.train_fraction}")
    if args.calib_size <= 0:
        raise QuantbenchError(f"--calib-size must be > 0, got {args.calib_size}")
    ds = open_dataset(args.data, normalize=args.normalize, resize=args.resize)
    if args.train_data:
        train = open_dataset(args.train_data, normalize=args.normalize, resize=args.resize)
        if tuple(train.input_shape) != tuple(ds.input_shape):
            raise QuantbenchError(f"{args.train_data}: images are {train.input_shape}, {args.data} has {ds.input_shape}")
        test = ds
        split = {"train": f"all {len(train)} images of {args.train_data}", "eval": f"all {len(ds)} images of {args.data}"}
    else:
        parts = split_dataset(ds, {"train": args.train_fraction, "test": 1.0 - args.train_fraction}, seed=args.seed)
        train, test = parts["train"], parts["test"]
        split = {"train": f"{len(train)} images of {args.data} ({args.train_fraction:.0%}, stratified, seed {args.seed})",
                 "eval": f"the other {len(test)} images"}
    if len(train) < args.calib_size:
        raise QuantbenchError(f"fine-tuning set has {len(train)} images, fewer than --calib-size {args.calib_size}")
    calib = subset(train, args.calib_size, seed=args.seed)
    split["calib"] = f"{len(calib)} of the fine-tuning images"
    return ds, calib, train, test, split


def _add_output_args(p: argparse.ArgumentParser, out_help: str, json_help: str | None = None) -> None:
    """The flags of every verb that records a run: --out, --store, --no-progress, --json."""
    p.add_argument("--out", metavar="DIR", help=out_help)
    p.add_argument("--runs-dir", default="runs", help=argparse.SUPPRESS)
    p.add_argument("--store", default="runs/quantbench.db", metavar="DB")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help=json_help)


def _add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", metavar="FILE")
    p.add_argument("--data", required=True, metavar="SPEC", help="data; split into fine-tuning and evaluation "
                   "images unless --train-data is given (then all of it is evaluated)")
    p.add_argument("--train-data", metavar="SPEC", help="fine-tuning/calibration images (default: a split of --data)")
    p.add_argument("--train-fraction", type=float, default=0.8, help="share of --data for fine-tuning (default 0.8)")
    p.add_argument("--calib-size", type=int, default=512, metavar="N")
    p.add_argument("--normalize", default="auto")
    p.add_argument("--resize", type=int, metavar="S")
    p.add_argument("--seed", type=int, default=0)
    _add_output_args(p, "folder for models and report (default runs/<run-id>)")


def _mixed_budget(args: argparse.Namespace) -> dict[str, Any]:
    kb, bits = getattr(args, "budget_kb", None), getattr(args, "avg_bits", None)
    if (kb is None) == (bits is None):
        raise QuantbenchError("mixed: give exactly one budget: --budget-kb KB or --avg-bits BITS")
    if kb is not None and kb <= 0:
        raise QuantbenchError(f"mixed: --budget-kb must be > 0, got {kb}")
    if bits is not None and not 2 <= bits <= 8:
        raise QuantbenchError(f"mixed: --avg-bits must be in 2..8, got {bits}")
    return {"budget_bytes": int(kb * 1000)} if kb is not None else {"average_bits": float(bits)}


def _print_variants(fp: dict[str, Any], variants: list[dict[str, Any]]) -> None:
    _print_table(["variant", "top-1 %", "size on disk", "drop vs FP32 (points, 95% CI)"], [
        ["fp32", f"{fp['top1']:.2f}", f"{fp['size_bytes']:,} B", "–"]] + [
        [v["method"], f"{v['top1']:.2f}", f"{v['size_bytes']:,} B",
         f"{v['drop']['top1_points']:+.2f} [{v['drop']['ci_low']:+.2f}, {v['drop']['ci_high']:+.2f}] "
         f"p={v['drop']['p_value']:.3g}"] for v in variants])


def _fp32_stage(model: Any, args: argparse.Namespace, ds: Any, test: Any, key: Any, stage: Any, out_dir: Any
                ) -> tuple[Any, dict[str, Any]]:
    from quantbench.experiments.records import accuracy_rows, cost_rows
    from quantbench.measure.accuracy import evaluate
    from quantbench.measure.macs import count_macs
    from quantbench.measure.params import count_parameters
    from quantbench.measure.size import save_fp32

    fp32 = evaluate(model, test, topk=(1, 5), progress=False if args.no_progress else "eval fp32")
    size = save_fp32(model, out_dir / "model_fp32.pt")
    stage.commit(accuracy_rows(key, fp32, "test") + cost_rows(
        key, params=count_parameters(model), size_bytes=size, size_file="model_fp32.pt",
        macs=count_macs(model, ds.input_shape)))
    return fp32, {"top1": fp32.top1, "top5": fp32.topk.get(5), "ci": fp32.ci, "size_bytes": size}


def cmd_qat(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantbench import config as C
    from quantbench.experiments.qat import mixed_rows, qat_extra, run_qat, search_mixed
    from quantbench.experiments.records import RowKey
    from quantbench.experiments.runner import prepare_model, recorded_run
    from quantbench.quant.qat import QATConfig
    from quantbench.quant.spec import parse_scheme

    if args.epochs < 1:
        raise QuantbenchError(f"qat: --epochs must be >= 1, got {args.epochs}")
    budget = None
    if args.plan:
        kind, _, value = args.plan.partition(":")
        if kind != "mixed" or not value:
            raise QuantbenchError(f"qat: --plan {args.plan!r} unknown; expected mixed:KB (e.g. mixed:70)")
        try:
            budget = {"budget_bytes": int(float(value) * 1000)}
        except ValueError:
            raise QuantbenchError(f"qat: --plan mixed:KB needs a number of KB, got {value!r}") from None
    plan_check = parse_scheme(args.scheme)
    if plan_check.default.act is not None and plan_check.default.act.dynamic:
        raise QuantbenchError("qat: scheme 'dynamic' cannot be trained; use a static scheme such as w4a4 or w8a8")
    train_cfg = C.TrainConfig(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, batch_size=args.batch_size,
                              weight_decay=0.0, seed=args.seed)
    if args.bn_freeze_epoch < 0:
        raise QuantbenchError(f"qat: --bn-freeze-epoch must be >= 0, got {args.bn_freeze_epoch}")
    cfg = QATConfig(scheme=args.scheme, init=args.init, first_last=args.first_last, act_grad=args.act_grad,
                    calib_size=args.calib_size, adaround_iters=args.adaround_iters, train=train_cfg,
                    bn_freeze_epoch=args.bn_freeze_epoch)
    cfg.ptq().plan()  # validates the starting algorithm
    ds, calib, train, test, split = _finetune_splits(args)
    model = prepare_model(C.ModelConfig(name=args.model, checkpoint=args.checkpoint), ds.input_shape, ds.num_classes)
    model_kwargs = {"num_classes": ds.num_classes, "in_channels": ds.input_shape[0]}
    key = RowKey(args.model, args.data)
    config = {"verb": "qat", "model": {"name": args.model, "checkpoint": args.checkpoint},
              "data": {"spec": args.data, "train": args.train_data, "split": split, "normalize": args.normalize},
              "qat": {**dataclasses.asdict(cfg)}, "plan": args.plan}
    result: dict[str, Any] = {}

    def body(stage: Any, out_dir: Path) -> None:
        fp32, fp = _fp32_stage(model, args, ds, test, key, stage, out_dir)
        plan = None
        if budget is not None:
            search = search_mixed(model, calib, act_bits=int(plan_check.default.act.bits) if plan_check.default.act
                                  else 8, model_name=args.model, model_kwargs=model_kwargs,
                                  input_shape=ds.input_shape, extra=qat_extra(cfg), **budget)
            plan = search.plan
            stage.commit(mixed_rows(RowKey(args.model, args.data, "mixed-qat", "torch"), search))
            result["mixed"] = {"bits": search.choice.bits, "average_bits": search.choice.average_bits,
                               "predicted_file_bytes": search.predicted_file_bytes}
        out = run_qat(model, cfg, calib, train, test, key, fp32, out_dir, plan=plan, model_name=args.model,
                      model_kwargs=model_kwargs, input_shape=ds.input_shape, progress=not args.no_progress,
                      fp32_finetune=not args.no_fp32_finetune)
        stage.commit(out.rows)
        result.update(out.record(), fp32=fp, n_images=fp32.n_images, split=split, model=args.model, data=args.data)

    outcome = recorded_run("qat", config, store_path=args.store, out_root=args.runs_dir, body=body,
                           name=f"qat {args.model} {cfg.label()}", out_dir=args.out)
    result.update(run_id=outcome.run_id, report=str(outcome.report_html), out_dir=str(outcome.out_dir))
    if args.json:
        _emit_json(result)
        return 0
    print(f"{args.model}: fine-tuned on {split['train']}; evaluated on {split['eval']}")
    p = result["ptq"]
    _print_variants(result["fp32"], [
        {"method": p["method"] + " (PTQ start)", "top1": p["top1"], "size_bytes": p["size_bytes"], "drop": p["drop"]},
        {"method": result["method"], "top1": result["quant"]["top1"], "size_bytes": result["quant"]["size_bytes"],
         "drop": result["drop"]}])
    ft = result.get("fp32_finetuned")
    if ft:
        d = ft["qat_drop_vs_finetuned"]
        print(f"\nFP32 fine-tuned the same way on the same images: {ft['top1']:.2f}%; QAT is "
              f"{d['top1_points']:+.2f} points below it [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] p={d['p_value']:.3g} "
              "(fine-tuning also adapts to these images; this is the fair reference)")
    ratio = result["qat_vs_fp32_epoch_time"]
    print(f"\nQAT: {len(result['epochs'])} epochs in {result['train_time_s']:.1f} s "
          f"({result['qat_epoch_s']:.2f} s/epoch; FP32 on the same data: {result['fp32_epoch_s']:.2f} s/epoch"
          + (f", QAT {ratio:.1f}x slower per epoch)" if ratio else ")"))
    print(f"quantized model: {result['quant']['artifact']}\nreport: {outcome.report_html}")
    return 0


def cmd_mixed(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantbench import config as C
    from quantbench.experiments.ptq import ptq_extra, run_ptq
    from quantbench.experiments.qat import mixed_rows, search_mixed
    from quantbench.experiments.records import RowKey
    from quantbench.experiments.runner import prepare_model, recorded_run
    from quantbench.quant.ptq import PTQConfig

    budget = _mixed_budget(args)
    bits = tuple(sorted(set(args.bits)))
    if any(not 2 <= b <= 8 for b in bits):
        raise QuantbenchError(f"mixed: --bits must be in 2..8, got {','.join(map(str, args.bits))}")
    if not 2 <= args.act_bits <= 8:
        raise QuantbenchError(f"mixed: --act-bits must be in 2..8, got {args.act_bits}")
    uniform = PTQConfig(scheme=f"w{args.compare_bits}a{args.act_bits}", algo=args.algo, calib_size=args.calib_size)
    uniform.plan()
    ds, calib, _train, test, split = _finetune_splits(args)
    model = prepare_model(C.ModelConfig(name=args.model, checkpoint=args.checkpoint), ds.input_shape, ds.num_classes)
    model_kwargs = {"num_classes": ds.num_classes, "in_channels": ds.input_shape[0]}
    key = RowKey(args.model, args.data)
    config = {"verb": "mixed", "model": {"name": args.model, "checkpoint": args.checkpoint},
              "data": {"spec": args.data, "split": split, "normalize": args.normalize},
              "mixed": {**budget, "bits": bits, "metric": args.metric, "act_bits": args.act_bits, "algo": args.algo}}
    result: dict[str, Any] = {}

    def body(stage: Any, out_dir: Path) -> None:
        fp32, fp = _fp32_stage(model, args, ds, test, key, stage, out_dir)
        kw = {"model_name": args.model, "model_kwargs": model_kwargs, "input_shape": ds.input_shape,
              "progress": not args.no_progress}
        uni = run_ptq(model, uniform, calib, test, key, fp32, out_dir, **kw)
        stage.commit(uni.rows)
        mixed_cfg = PTQConfig(scheme=f"w8a{args.act_bits}", algo=args.algo, calib_size=args.calib_size)
        search = search_mixed(model, calib, bits=bits, act_bits=args.act_bits, metric=args.metric,
                              n_images=min(args.calib_size, 512), observer=mixed_cfg.algorithm().weight_observer,
                              extra=ptq_extra(mixed_cfg, calib), **budget,
                              **{k: kw[k] for k in ("model_name", "model_kwargs", "input_shape")})
        label = f"mixed-a{args.act_bits}-{args.algo}"
        mixed = run_ptq(model, mixed_cfg, calib, test, key, fp32, out_dir, plan=search.plan, label=label, **kw)
        mkey = RowKey(args.model, args.data, label, "torch")
        # "predicted" accuracy: the mixed model on the calibration images (no evaluation image seen)
        from quantbench.measure.accuracy import evaluate

        predicted = evaluate(mixed.model, calib, topk=(1,)).top1
        stage.commit(mixed.rows + mixed_rows(mkey, search) + [
            mkey.row("predicted_top1", predicted, "%", basis="the mixed model's top-1 on the calibration images")])
        result.update(fp32=fp, n_images=fp32.n_images, split=split, model=args.model, data=args.data,
                      method=label, quant=mixed.record["quant"], drop=mixed.record["drop"],
                      uniform={"method": uni.record["method"], **uni.record["quant"], "drop": uni.record["drop"]},
                      mixed={"bits": search.choice.bits, "average_bits": search.choice.average_bits,
                             "predicted_damage": search.choice.predicted_damage, "metric": args.metric,
                             "predicted_top1": predicted, "budget": search.budget, "table": search.table()})

    outcome = recorded_run("mixed", config, store_path=args.store, out_root=args.runs_dir, body=body,
                           name=f"mixed {args.model}", out_dir=args.out)
    result.update(run_id=outcome.run_id, report=str(outcome.report_html), out_dir=str(outcome.out_dir))
    if args.json:
        _emit_json(result)
        return 0
    m = result["mixed"]
    print(f"{args.model}: calibrated on {split['calib']}; evaluated on {split['eval']}")
    _print_table(["layer", "type", "params", "bits", f"damage ({args.metric})"],
                 [[t["layer"], t["kind"], f"{t['params']:,}", str(t["bits"]), f"{t['damage']:.3g}"] for t in m["table"]])
    print(f"\naverage weight bits {m['average_bits']:.2f}; predicted top-1 (calibration images) "
          f"{m['predicted_top1']:.2f}%; measured below\n")
    u = result["uniform"]
    _print_variants(result["fp32"], [
        {"method": u["method"], "top1": u["top1"], "size_bytes": u["size_bytes"], "drop": u["drop"]},
        {"method": result["method"], "top1": result["quant"]["top1"], "size_bytes": result["quant"]["size_bytes"],
         "drop": result["drop"]}])
    print(f"\nquantized model: {result['quant']['artifact']}\nreport: {outcome.report_html}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantbench.report import write_sweep_report
    from quantbench.store import ResultStore
    from quantbench.sweep import expand, load_sweep, run_sweep

    sweep = load_sweep(args.file)
    cells = expand(sweep)
    keys = list(sweep.grid)
    if args.dry_run:
        done = ResultStore(args.store).sweep_cells(sweep.name) if Path(args.store).exists() else {}
        rows = [[c.cell_id, "done" if c.cell_id in done else "pending", c.label(keys)] for c in cells]
        if args.json:
            _emit_json([{"cell_id": c.cell_id, "status": r[1], "params": c.params} for c, r in zip(cells, rows,
                                                                                                   strict=True)])
            return 0
        print(f"sweep {sweep.name} ({sweep.kind}): {len(cells)} cells, {len(done)} finished in {args.store}")
        _print_table(["cell", "status", "parameters"], rows)
        return 0
    out = run_sweep(sweep, store_path=args.store, executor=args.executor, workers=args.workers,
                    progress=not args.no_progress, threads=args.threads)
    report = None
    if out.ran or out.skipped:
        report, _ = write_sweep_report(args.store, sweep.name, Path(sweep.out_dir) / sweep.name)
    summary = {"sweep": sweep.name, "cells": len(cells), "ran": len(out.ran), "skipped": len(out.skipped),
               "failed": out.failed, "wall_s": out.wall_s, "store": args.store,
               "report": str(report) if report else None}
    if args.json:
        _emit_json(summary)
    else:
        print(f"sweep {sweep.name}: {len(out.ran)} cells ran, {len(out.skipped)} already finished, "
              f"{len(out.failed)} failed, in {out.wall_s:.1f} s; results in {args.store}")
        for cid, err in out.failed.items():
            print(f"  failed {cid}: {err}")
        if report:
            print(f"report: {report}")
    return 1 if out.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantbench.report import write_report, write_sweep_report
    from quantbench.store import ResultStore

    if not Path(args.store).exists():
        raise QuantbenchError(f"{args.store}: no results store here (pass --store DB)")
    with ResultStore(args.store) as store:
        is_sweep = args.id in store.sweeps()
        run = None if is_sweep else store.run(args.id)  # one-line error when nothing matches
    if is_sweep:
        html, md = write_sweep_report(args.store, args.id, args.out or Path("runs/sweeps") / args.id)
    else:
        html, md = write_report(args.store, run["run_id"], args.out or run.get("out_dir") or Path("runs") / run["run_id"])
    if args.json:
        _emit_json({"html": str(html), "markdown": str(md)})
    else:
        print(f"report: {html}\nmarkdown: {md}")
    return 0


def _hyper(pairs: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise QuantbenchError(f"--hyper expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(raw) if raw else ""
    return out


def cmd_lint(args: argparse.Namespace) -> int:
    from quantbench.quant.lint import format_findings, lint_zoo_model

    findings = lint_zoo_model(args.model, **_hyper(args.hyper))
    if args.json:
        _emit_json([f.as_dict() for f in findings])
    else:
        print(f"{args.model}: {len(findings)} finding(s)")
        print(format_findings(findings))
    return 1 if args.strict and any(f.severity in ("error", "warning") for f in findings) else 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from quantbench.bundle import build_bundle

    out = build_bundle(args.model, checkpoint=args.checkpoint, schemes=_csv_names(args.schemes) or (),
                       out_dir=args.out, input_size=args.input_size, calib=args.calib, calib_size=args.calib_size,
                       batch_sizes=args.batch_sizes or (1, 8), normalize=args.normalize, make_zip=not args.no_zip,
                       formats=_csv_names(args.formats) if args.formats else None)
    manifest = json.loads((out / "manifest.json").read_text())
    if args.json:
        _emit_json({"bundle": str(out), "zip": None if args.no_zip else str(out) + ".zip", "manifest": manifest})
        return 0
    _print_table(["scheme", "engine", "file", "bytes", "MACs/image", "sha256"],
                 [[m["scheme"], m["engine"], m["file"] + (f" (+{len(m['batch_files']) - 1} batch files)"
                                                           if len(m.get("batch_files", {})) > 1 else ""),
                   f"{m['bytes']:,}", f"{m['macs']:,}", m["sha256"][:16] + "..."] for m in manifest["models"]])
    print(f"\nbundle: {out}" + ("" if args.no_zip else f" (and {out}.zip)"))
    print("on the device: python3 run_bundle.py --device NAME --out results.json; then: quantbench import results.json")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantbench.bundle import import_results
    from quantbench.report import write_devices_report

    run_id, n = import_results(args.results, store_path=args.store, device=args.device,
                               profile_gmacs=args.profile_gmacs)
    from quantbench.store import ResultStore

    with ResultStore(args.store) as store:
        run = store.run(run_id)
    model = run["config"]["model"]["name"]
    html, _ = write_devices_report(args.store, model, args.out or Path("runs") / f"devices-{model}")
    if args.json:
        _emit_json({"run_id": run_id, "rows": n, "device": run["config"]["device"], "report": str(html)})
    else:
        print(f"imported {n} rows for device {run['config']['device']} (run {run_id}) into {args.store}")
        print(f"report (every device of {model}): {html}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantbench import config as C
    from quantbench.experiments.records import RowKey
    from quantbench.experiments.runner import prepare_model, recorded_run
    from quantbench.split.codec import CODECS, available_codecs
    from quantbench.split.experiment import anonymization, grid_png, noise_finetune, run_split, split_costs
    from quantbench.split.features import FeatureQuantizer
    from quantbench.split.latency import best_split, estimate_latency, parse_profile
    from quantbench.split.splitter import num_split_points

    if args.codec not in available_codecs():
        why = "not installed here" if args.codec in CODECS else "unknown"
        raise QuantbenchError(f"split: codec {args.codec!r} {why}; available: {', '.join(available_codecs())}")
    comp = _csv_names(args.companding) or ("none",)
    for c in comp:
        if c not in ("none", "mulaw"):
            raise QuantbenchError(f"split: --companding {c!r} unknown; expected none and/or mulaw")
    for q in args.qbins:
        FeatureQuantizer(q)  # validates 2..256
    edge, cloud = parse_profile(args.edge), parse_profile(args.cloud)
    if any(b <= 0 for b in args.bandwidths):
        raise QuantbenchError(f"split: --bandwidths must be > 0 Mbit/s, got {args.bandwidths}")
    ds, calib, train, test, split_desc = _finetune_splits(args)
    model = prepare_model(C.ModelConfig(name=args.model, checkpoint=args.checkpoint), ds.input_shape, ds.num_classes)
    last = num_split_points(model)
    bad = [s for s in args.splits if not 0 <= s <= last]
    if bad:
        raise QuantbenchError(f"split: {args.model} can be split after block 0..{last}, got {bad[0]}")
    noise_at = args.noise_at if args.noise_at is not None else None
    test_xy, calib_xy, train_xy = test.tensors(), calib.tensors(), train.tensors()
    if args.eval_size:
        test_xy = (test_xy[0][: args.eval_size], test_xy[1][: args.eval_size])
    key = RowKey(args.model, args.data)
    config = {"verb": "split", "model": {"name": args.model, "checkpoint": args.checkpoint},
              "data": {"spec": args.data, "split": split_desc, "normalize": args.normalize},
              "split": {"splits": args.splits, "qbins": args.qbins, "companding": comp, "range": args.range,
                        "codec": args.codec, "noise_train": args.noise_train, "noise_qbins": args.noise_qbins,
                        "finetune_part": args.finetune_part, "bn_stats": args.bn_stats, "lr": args.lr,
                        "edge": edge.as_dict(), "cloud": cloud.as_dict(), "bandwidths_mbps": args.bandwidths}}
    records: list[dict[str, Any]] = []

    def body(stage: Any, out_dir: Path) -> None:
        models: dict[tuple[int, int, str], dict[str, Any]] = {}
        plain_at: dict[int, Any] = {}  # no-noise fine-tuning does not depend on qbins or companding
        regime = {"epochs": args.noise_train, "lr": args.lr, "seed": args.seed, "part": args.finetune_part,
                  "freeze_bn": args.bn_stats == "frozen"}
        if args.noise_train > 0:
            for s in args.splits:
                for q in args.noise_qbins:
                    for c in comp:
                        at = s if noise_at is None else noise_at
                        noisy, _ = noise_finetune(model, train_xy, noise_at=at, qbins=q, companding=c, **regime)
                        if at not in plain_at:
                            plain_at[at] = noise_finetune(model, train_xy, noise_at=at, qbins=q, companding=c,
                                                          noise=False, **regime)[0]
                        label = "noise" if at == s else f"noise@{at}"
                        models[(s, q, c)] = {label: noisy, "no-noise": plain_at[at]}
        recs = run_split(model, calib_xy, test_xy, splits=list(args.splits), qbins=list(args.qbins),
                         companding=list(comp), range_mode=args.range, codec=args.codec, models=models,
                         log=None if args.no_progress else (lambda m: print(m, file=sys.stderr)))
        rows = []
        for r in recs:
            est = {f"{bw:g}": estimate_latency(edge_macs=r["edge_macs"], cloud_macs=r["cloud_macs"],
                                               coded_bytes=r["total_bits"] / 8 / r["n_images"], bandwidth_mbps=bw,
                                               edge=edge, cloud=cloud)["total_s"] for bw in args.bandwidths}
            r["latency_s_by_bandwidth"] = est
            method = f"split{r['split']}-q{r['qbins']}-{r['companding']}" + (f"-{r['noise']}" if r["noise"] != "none"
                                                                              else "")
            k = RowKey(args.model, args.data, method, "torch")
            info = {k2: r[k2] for k2 in ("split", "block", "qbins", "companding", "range", "codec", "noise",
                                        "n_images", "feature_shape")}
            for metric, unit in (("top1", "%"), ("top5", "%"), ("bpp", "bits/pixel"), ("cr", "x"),
                                 ("kb_per_sample", "kB"), ("coded_bytes", "bytes"), ("side_bytes", "bytes"),
                                 ("order0_entropy_bpp", "bits/pixel"), ("edge_macs", "MACs"), ("cloud_macs", "MACs")):
                rows.append(k.row(f"split.{metric}", r[metric], unit, **info))
            for bw, t in est.items():
                rows.append(k.row("split.latency_s", t, "s", **info, bandwidth_mbps=float(bw), edge=edge.name,
                                  cloud=cloud.name))
        plans = best_split([{"split": s, **split_costs(model, s, tuple(ds.input_shape)),
                             "coded_bytes": min(r["total_bits"] for r in recs if r["split"] == s) / 8 / recs[0]["n_images"]}
                            for s in args.splits], list(args.bandwidths), edge, cloud)
        for p in plans:
            rows.append(key.row("split.best", p["best"]["split"], "block", bandwidth_mbps=p["bandwidth_mbps"],
                                latency_s=p["best"]["total_s"], edge=edge.name, cloud=cloud.name))
        # anonymization: how much of the input a linear decoder recovers, and what the features look like
        fq_view = FeatureQuantizer(min(args.qbins), companding=comp[0])
        for s in args.splits:
            a = anonymization(model, s, calib_xy[0][:400], test_xy[0][:200])
            aq = anonymization(model, s, calib_xy[0][:400], test_xy[0][:200], fq=fq_view)
            png = out_dir / f"anonymization_split{s}.png"
            png.write_bytes(grid_png(model, s, test_xy[0][:4], fq_view))
            rows.append(key.row("split.recover_psnr_db", a["psnr_db"], "dB", split=s, features="float",
                                baseline_psnr_db=a["baseline_psnr_db"], file=png.name))
            rows.append(key.row("split.recover_psnr_db", aq["psnr_db"], "dB", split=s, features=fq_view.label(),
                                baseline_psnr_db=aq["baseline_psnr_db"], file=png.name))
            for r in recs:
                if r["split"] == s:
                    r.setdefault("recover_psnr_db", a["psnr_db"])
        stage.commit(rows)
        records.extend(recs)

    outcome = recorded_run("split", config, store_path=args.store, out_root=args.runs_dir, body=body,
                           name=f"split {args.model}", out_dir=args.out)
    if args.json:
        _emit_json(records)
        return 0
    print(f"{args.model}: evaluated on {len(test_xy[1])} images ({split_desc['eval']}); codec {args.codec}, "
          f"range {args.range}")
    _print_table(["split", "block", "qbins", "companding", "noise", "top-1 %", "bpp", "CR", "kB/sample",
                  "edge MMACs", "cloud MMACs"],
                 [[str(r["split"]), r["block"], str(r["qbins"]), r["companding"], r["noise"], f"{r['top1']:.2f}",
                   f"{r['bpp']:.3f}", f"{r['cr']:.1f}", f"{r['kb_per_sample']:.3f}", f"{r['edge_macs'] / 1e6:.1f}",
                   f"{r['cloud_macs'] / 1e6:.1f}"] for r in records])
    print(f"\nFP32 top-1 {records[0]['fp32_top1']:.2f}% on the same images; report: {outcome.report_html}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="quantbench", description="What does quantization do to my CNN, on my hardware?")
    parser.add_argument("--version", action="version", version=f"quantbench {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = sub.add_parser("run", help="the default experiment: train, quantize, measure, store, report")
    _add_experiment_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train a zoo model in FP32; saves the checkpoint and history")
    _add_experiment_args(p)
    p.set_defaults(func=lambda a: cmd_run(a, kind="train"))

    p = sub.add_parser("eval", help="top-1/top-k (with 95%% CIs) of a model on ALL images of a data spec")
    p.add_argument("--model", required=False)
    p.add_argument("--checkpoint", metavar="FILE")
    p.add_argument("--data", metavar="SPEC")
    p.add_argument("--normalize", default="auto")
    p.add_argument("--resize", type=int, metavar="S")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--store", default="runs/quantbench.db", metavar="DB")
    p.add_argument("--no-store", action="store_true", help="do not write the result to the store")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quantize", help="post-training quantization: FP32 vs quantized on the same images")
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", metavar="FILE")
    p.add_argument("--data", required=True, metavar="SPEC", help="evaluation data (all of it when --calib is given)")
    p.add_argument("--calib", metavar="SPEC", help="separate calibration data (default: a disjoint split of --data)")
    p.add_argument("--calib-size", type=int, default=512, metavar="N")
    p.add_argument("--scheme", default="w8a8", help="w8a8, w4a8, w4a4, w2a8, wXaY, w8 (weights only), dynamic")
    p.add_argument("--algo", default="mse", help="minmax, percentile, mse, entropy, adaround, ... (see docs)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default per channel)")
    p.add_argument("--companding", default="none", choices=["none", "mulaw"], help="mu-law companded weights")
    p.add_argument("--mu", type=float, default=255.0)
    p.add_argument("--first-last", default="same", choices=["same", "int8", "fp32"],
                   help="precision policy for the first and last layers")
    p.add_argument("--equalize", action="store_true", help="cross-layer equalization before quantizing")
    p.add_argument("--bias-correction", action="store_true", help="empirical bias correction after calibration")
    p.add_argument("--adaround-iters", type=int, default=1000)
    p.add_argument("--sensitivity-images", type=int, default=500, metavar="N",
                   help="images for the per-layer sensitivity table (0 skips it)")
    p.add_argument("--normalize", default="auto")
    p.add_argument("--resize", type=int, metavar="S")
    p.add_argument("--seed", type=int, default=0)
    _add_output_args(p, "folder for the quantized model and report (default runs/<run-id>)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("qat", help="quantization-aware training from a checkpoint: PTQ start vs QAT vs FP32")
    _add_finetune_args(p)
    p.add_argument("--scheme", default="w4a4", help="wXaY with X, Y in 2..8 (default w4a4)")
    p.add_argument("--plan", metavar="mixed:KB", help="mixed precision under a file-size budget, then QAT")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--init", default="mse", help="PTQ algorithm of the starting point (mse, adaround, ...)")
    p.add_argument("--act-grad", choices=["lsq", "pact"], default="lsq", help="how activation step sizes learn")
    p.add_argument("--first-last", default="same", choices=["same", "int8", "fp32"])
    p.add_argument("--adaround-iters", type=int, default=500)
    p.add_argument("--bn-freeze-epoch", type=int, default=0, metavar="E",
                   help="BatchNorm statistics keep updating for E epochs, then freeze (0: frozen, folded from the start)")
    p.add_argument("--no-fp32-finetune", action="store_true",
                   help="skip fine-tuning the FP32 model the same way (the fair reference; also the time baseline)")
    p.set_defaults(func=cmd_qat)

    p = sub.add_parser("mixed", help="mixed-precision weights under a size budget vs uniform PTQ")
    _add_finetune_args(p)
    p.add_argument("--budget-kb", type=float, metavar="KB", help="size of the saved file, 1 KB = 1000 bytes")
    p.add_argument("--avg-bits", type=float, metavar="BITS", help="or: parameter-weighted average weight bits")
    p.add_argument("--bits", type=_csv_ints, default=(2, 3, 4, 5, 6, 8), metavar="B1,B2",
                   help="candidate weight bit-widths (default 2,3,4,5,6,8)")
    p.add_argument("--metric", choices=["mse", "hessian"], default="mse",
                   help="layer sensitivity: logits MSE (default) or HAWQ Hessian-trace estimate")
    p.add_argument("--act-bits", type=int, default=8)
    p.add_argument("--algo", default="mse", help="PTQ algorithm for both mixed and uniform models")
    p.add_argument("--compare-bits", type=int, default=4, help="uniform weight bits shown beside (default 4)")
    p.set_defaults(func=cmd_mixed)

    p = sub.add_parser("bench", help="latency/throughput of a model on every engine x variant x batch size")
    p.add_argument("--model", help="zoo model name")
    p.add_argument("--config", metavar="FILE", help="YAML study of several models (e.g. examples/seven_cnns.yaml)")
    p.add_argument("--checkpoint", metavar="FILE", help="weights (speed does not depend on them)")
    p.add_argument("--quantized", metavar="PATH", help="a .qbm (or folder from `quantbench quantize --out`) whose "
                   "scales int8 deploys (default: w8a8 minmax calibrated on --calib or on random images)")
    p.add_argument("--engines", metavar="all|LIST", help="engines, comma-separated (default all installed)")
    p.add_argument("--variants", metavar="LIST", help="fp32,bf16,int8,dynamic subset (default: all supported)")
    p.add_argument("--batch-sizes", type=_csv_ints, metavar="B1,B2", help="default 1,8,32")
    p.add_argument("--input-size", type=int, metavar="S", help="square input side (default: the model's)")
    p.add_argument("--threads", type=int, help="intra-op threads for every engine (default: all cores)")
    p.add_argument("--calib", metavar="SPEC", help="data spec whose images calibrate int8 (default random images)")
    p.add_argument("--calib-size", type=int, default=32, metavar="N")
    p.add_argument("--min-time", type=float, metavar="S", help="timed seconds per cell (default 1.0)")
    p.add_argument("--no-isolate", action="store_true",
                   help="run every engine in this process (faster; no per-engine peak RSS)")
    _add_output_args(p, "folder for the report (default runs/<run-id>)", "last stdout line: JSON list of records")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("split", help="split computing: cut after block N, quantize + entropy-code features")
    p.add_argument("--config", metavar="FILE",
                   help="YAML file of these options, keys named like the flags (splits: [1, 3, 5], noise_train: 2); "
                        "flags on the command line override it (e.g. examples/split_resnet20.yaml)")
    _add_finetune_args(p)
    p.add_argument("--splits", type=_csv_ints, default=(1, 3, 5), metavar="N1,N2", help="split after these blocks")
    p.add_argument("--qbins", type=_csv_ints, default=(4, 6, 8), metavar="Q1,Q2", help="feature levels, 2..256")
    p.add_argument("--companding", default="none,mulaw", help="none and/or mulaw")
    p.add_argument("--range", choices=["sample", "calibrated"], default="sample",
                   help="per-sample min/max (sent as side info) or one calibrated range")
    p.add_argument("--codec", default="range-perchannel", help="entropy coder (see quantbench.split.codec)")
    p.add_argument("--noise-train", type=int, default=0, metavar="EPOCHS",
                   help="fine-tune with quantization noise at the split (and without, for comparison)")
    p.add_argument("--noise-qbins", type=_csv_ints, default=(4,), metavar="Q", help="qbins for noise training")
    p.add_argument("--noise-at", type=int, metavar="N", help="inject noise after block N instead of at the split")
    p.add_argument("--finetune-part", choices=["cloud", "all"], default="cloud",
                   help="noise/no-noise fine-tuning trains the cloud part only (edge frozen; default) or all")
    p.add_argument("--bn-stats", choices=["frozen", "update"], default="frozen",
                   help="BatchNorm running statistics during fine-tuning: kept (default) or re-estimated")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-size", type=int, metavar="N", help="evaluate on the first N evaluation images")
    p.add_argument("--edge", default="raspberry-pi-4b", help="edge device profile (or NAME=GFLOPS)")
    p.add_argument("--cloud", default="nvidia-a100", help="cloud device profile (or NAME=GFLOPS)")
    p.add_argument("--bandwidths", type=lambda t: tuple(float(v) for v in t.split(",")), default=(1.0, 10.0, 100.0),
                   metavar="MBPS", help="link bandwidths in Mbit/s for the latency model")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("bundle", help="a folder/zip to measure a model on a device with only numpy + onnxruntime "
                                      "(or ai-edge-litert for the .tflite files)")
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", metavar="FILE")
    p.add_argument("--schemes", default="fp32,dynamic,w8a8", help="comma list of fp32, dynamic, w8a8")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder for the bundle (DIR.zip is written too)")
    p.add_argument("--input-size", type=int, metavar="S")
    p.add_argument("--calib", metavar="SPEC", help="calibration/sample images (default: seeded random images)")
    p.add_argument("--calib-size", type=int, default=64, metavar="N")
    p.add_argument("--normalize", default="auto")
    p.add_argument("--batch-sizes", type=_csv_ints, metavar="B1,B2", help="default 1,8")
    p.add_argument("--formats", metavar="LIST", help="onnx,tflite (default: onnx, plus tflite where litert-torch "
                                                     "is installed)")
    p.add_argument("--no-zip", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("import", help="store a device's results (from run_bundle.py) and compare devices")
    p.add_argument("results", help="results JSON written by run_bundle.py on the device")
    p.add_argument("--device", help="store under this name instead of the one in the file")
    p.add_argument("--profile-gmacs", type=float, metavar="RATE",
                   help="device rate for the latency estimate (GMAC/s; FLOPs = 2 x MACs); known: "
                        "raspberry-pi-4b, raspberry-pi-zero-2w, nvidia-a100")
    p.add_argument("--store", default="runs/quantbench.db", metavar="DB")
    p.add_argument("--out", metavar="DIR", help="report folder (default runs/devices-MODEL)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("lint", help="layers that make integer kernels slow or keep them in float, with fixes")
    p.add_argument("--model", required=True, help="zoo model name")
    p.add_argument("--hyper", action="append", default=[], metavar="KEY=VALUE",
                   help="model hyper-parameter, e.g. --hyper divisor=8 --hyper pad_layer=false (repeatable)")
    p.add_argument("--strict", action="store_true", help="exit 1 when there is any warning or error")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lint)

    p = sub.add_parser("sweep", help="run a YAML grid of experiments; resumes, skipping finished cells")
    p.add_argument("file", help="sweep file (see examples/)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and which are finished; run nothing")
    p.add_argument("--executor", default="inprocess",
                   help="inprocess, pool (local processes), ray (local Ray), ray://HOST:PORT (a Ray cluster)")
    p.add_argument("--workers", type=int, default=1, help="parallel cells for pool/ray (default 1)")
    p.add_argument("--threads", type=int, help="intra-op threads per cell (default: cores / workers)")
    p.add_argument("--store", default="runs/quantbench.db", metavar="DB")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="(re)write the HTML/Markdown report of a run or a whole sweep")
    p.add_argument("id", help="run id (or unique prefix) or sweep name")
    p.add_argument("--store", default="runs/quantbench.db", metavar="DB")
    p.add_argument("--out", metavar="DIR", help="folder (default: the run's folder, or runs/sweeps/NAME)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("models", help="list the model zoo with parameters and MACs")
    p.add_argument("pattern", nargs="?", default="*", help="glob on model names, e.g. 'resnet*'")
    p.add_argument("--no-count", action="store_true", help="skip counting parameters and MACs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("engines", help="list inference engines, their variants, and why any is unavailable")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_engines)

    p = sub.add_parser("datasets", help="list the data set kinds and their spec syntax")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("results", help="list, filter and export stored results")
    p.add_argument("--store", default="runs/quantbench.db", metavar="DB")
    p.add_argument("--runs", action="store_true", help="list runs instead of result rows")
    p.add_argument("--run", help="run id (or unique prefix)")
    for name in ("model", "data", "method", "engine", "metric"):
        p.add_argument(f"--{name}", help=f"filter on {name} (SQL LIKE pattern, e.g. 'top%%')")
    p.add_argument("--batch", type=int)
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--out", metavar="FILE", help="write the export to FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_results)
    return parser


OPTION_FILE_VERBS = ("split",)
"""Verbs whose ``--config FILE`` is a YAML file of their own flags (``run`` and ``bench`` read richer files)."""


def _subparser(parser: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[verb]


def option_file_flags(path: str, sub: argparse.ArgumentParser) -> list[str]:
    """The flags a YAML options file stands for: ``splits: [1, 3]`` -> ``--splits 1,3``.

    Keys are the verb's long option names (``-`` or ``_``); lists become comma lists; ``true``
    turns a switch on. The flags then go through argparse like typed ones, so a file is
    validated exactly as the command line is.

    Raises:
        QuantbenchError: unreadable file, an unknown key (named with the file), or a value that is
            no number, string, list or (for a switch) boolean.
    """
    from quantbench.config import read_yaml_mapping

    doc = read_yaml_mapping(path, "options file")
    by_dest = {a.dest: a for a in sub._actions if a.option_strings and a.dest not in ("help", "config")}
    flags: list[str] = []
    for key, value in doc.items():
        action = by_dest.get(str(key).replace("-", "_"))
        if action is None:
            raise QuantbenchError(f"{path}: unknown key {key!r}; expected one of: {', '.join(sorted(by_dest))}")
        opt = max(action.option_strings, key=len)
        if action.nargs == 0:  # a switch
            if not isinstance(value, bool):
                raise QuantbenchError(f"{path}: {key!r} is a switch; expected true or false, got {value!r}")
            flags += [opt] if value else []
            continue
        if isinstance(value, list) and value and all(isinstance(v, int | float | str) and not isinstance(v, bool)
                                                     for v in value):
            value = ",".join(str(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise QuantbenchError(f"{path}: {key!r} must be a number, a string or a non-empty list, got {value!r}")
        flags += [opt, str(value)]
    return flags


def expand_option_file(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``split --config F ...`` -> ``split <F's flags> ...``: the file first, so typed flags win."""
    if not argv or argv[0] not in OPTION_FILE_VERBS:
        return argv
    rest = argv[1:]
    for i, a in enumerate(rest):
        if a == "--config" and i + 1 < len(rest):
            path, rest = rest[i + 1], rest[:i] + rest[i + 2:]
            break
        if a.startswith("--config="):
            path, rest = a.split("=", 1)[1], rest[:i] + rest[i + 1:]
            break
    else:
        return argv
    return [argv[0], *option_file_flags(path, _subparser(parser, argv[0])), *rest]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    try:
        parser = build_parser()
        args = parser.parse_args(expand_option_file(list(argv) if argv is not None else sys.argv[1:], parser))
        return int(args.func(args) or 0)
    except QuantbenchError as exc:
        print(f"quantbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
