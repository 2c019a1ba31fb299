"""The verbs that run no experiment: listings, stored results, reports, sweeps, bundles and exports.

Example:
    >>> from quantbench.cli import main
    >>> main(["engines", "--json"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from quantbench.cli.flags import add_config_flags
from quantbench.cli.output import emit_json, print_table
from quantbench.errors import QuantbenchError
from quantbench.experiments.options import DEFAULT_STORE

__all__ = ["add_verbs", "run_sweep_file"]


def cmd_models(args: argparse.Namespace) -> int:
    from quantbench.models import MODELS, model_info
    from quantbench.models.summary import model_summary
    from quantbench.progress import bar as progress_bar
    from quantbench.report.tables import human_count

    names = MODELS.names(args.pattern)
    records = []
    bar = progress_bar(total=len(names), desc="counting parameters and MACs", unit="model",
                       enabled=not args.no_count and not args.no_progress)  # stderr: --json stdout stays clean
    for name in names:
        info = model_info(name)
        if args.num_classes:
            info["num_classes"] = args.num_classes
        records.append({"name": name, **info,
                        **(model_summary(name, num_classes=args.num_classes) if not args.no_count else {})})
        bar.set_postfix_str(name)
        bar.update(1)
    bar.close()
    if args.json:
        emit_json(records)
        return 0
    print_table(["model", "family", "input", "classes", "params", "parameters (exact)", "MACs/image"],
                [[r["name"], str(r.get("family", "")), "x".join(map(str, r["input_shape"])), str(r["num_classes"]),
                  human_count(r.get("params")), f"{r['params']:,}" if r.get("params") is not None else "–",
                  human_count(r.get("macs"))] for r in records])
    print("\nMACs = multiply-accumulates of conv/linear layers at the default input, batch 1; FLOPs = 2 x MACs.")
    print("Any other model works too: --model FILE.py:FACTORY, package.module:FACTORY, FILE.onnx, FILE.pt2, "
          "torchvision:NAME, timm:NAME.")
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    from quantbench.engines import engine_status

    rows = engine_status()
    if args.json:
        emit_json(rows)
        return 0
    body = []
    for r in rows:
        variants = ", ".join(v + (" (unsupported here)" if v in r["unsupported"] else "") for v in r["variants"])
        body.append([r["name"], "yes" if r["available"] else "no", variants, r["reason"] or ""])
        body += [["", "", f"  {v}: {why}", ""] for v, why in r["unsupported"].items()]
    print_table(["engine", "available", "variants", "note"], body)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from quantbench.data import DATASETS

    records = [{"kind": n, **DATASETS.meta(n)} for n in DATASETS.names()]
    if args.json:
        emit_json(records)
        return 0
    print_table(["spec", "description"],
                [[r["kind"] + (":PATH" if r.get("needs_path") else ""), r.get("description", "")] for r in records])
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from quantbench.store import ResultStore, export_rows

    if not Path(args.store).is_file():
        raise QuantbenchError(f"{args.store}: results database not found (run `quantbench run` first)")
    with ResultStore(args.store) as store:
        if args.runs:
            runs = store.runs()
            if args.format == "json" or args.json:
                emit_json([{k: v for k, v in r.items() if k != "environment"} for r in runs])
            else:
                print_table(["run id", "kind", "name", "status", "created"],
                            [[r["run_id"], r["kind"], r["name"] or "", r["status"], r["created"]] for r in runs])
            return 0
        if args.run:
            store.run(args.run)  # an id that matches nothing is a one-line error
        rows = store.query(run_id=args.run, model=args.model, data=args.data, method=args.method,
                           engine=args.engine, metric=args.metric, batch=args.batch, unfinished=args.all)
    fmt = "json" if args.json else args.format
    if fmt in ("csv", "json"):
        text = export_rows(rows, fmt)
        if args.out:
            _write_export(Path(args.out), text)
            print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
        elif fmt == "json":
            print(json.dumps(rows, default=str))
        else:
            sys.stdout.write(text)
        return 0
    print_table(["run", "model", "data", "method", "engine", "batch", "metric", "value", "unit"],
                [[r["run_id"][:26], r["model"], r["data"], r["method"], r["engine"],
                  "" if r["batch"] is None else str(r["batch"]), r["metric"],
                  "" if r["value"] is None else f"{r['value']:.6g}", r["unit"]] for r in rows])
    print(f"\n{len(rows)} rows", file=sys.stderr)
    return 0


def _write_export(path: Path, text: str) -> None:
    """Write an export, never over a database: a SQLite file (ours or another's) is refused by path."""
    if path.is_dir():
        raise QuantbenchError(f"{path}: is a folder; --out takes a file name")
    if path.is_file():
        with path.open("rb") as fh:
            if fh.read(16) == b"SQLite format 3\x00":
                raise QuantbenchError(f"{path}: is a SQLite database; refusing to overwrite it with an export")
    if not path.parent.is_dir():
        raise QuantbenchError(f"{path}: its folder {path.parent} does not exist")
    path.write_text(text, encoding="utf-8")


def cmd_report(args: argparse.Namespace) -> int:
    from quantbench.report import write_report, write_sweep_report
    from quantbench.store import ResultStore

    if not Path(args.store).exists():
        raise QuantbenchError(f"{args.store}: no results store here (pass --store DB)")
    with ResultStore(args.store) as store:
        is_sweep = args.id in store.sweeps()
        run = None if is_sweep else store.run(args.id)  # one-line error when nothing matches
    if is_sweep:
        from quantbench.paths import safe_component

        html, md = write_sweep_report(args.store, args.id,
                                      args.out or Path(args.store).parent / "sweeps" / safe_component(args.id))
    else:
        html, md = write_report(args.store, run["run_id"],
                                args.out or run.get("out_dir") or Path(args.store).parent / run["run_id"])
    if args.json:
        emit_json({"html": str(html), "markdown": str(md)})
    else:
        print(f"report: {html}\nmarkdown: {md}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from quantbench.report.compare import write_compare_report

    c, html, md = write_compare_report(args.store, args.run_a, args.run_b, args.out)
    if args.json:
        emit_json({**c.as_dict(), "html": str(html), "markdown": str(md)})
        return 0
    for note in c.notes:
        print(note, file=sys.stderr)
    print_table(["A", "B", "B - A top-1 points [95% CI]", "how"],
                [[r["a"], r["b"], f"{r['diff_points']:+.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]",
                  "paired" if r["paired"] else "unpaired"] for r in c.accuracy])
    print(f"report: {html}\nmarkdown: {md}")
    return 0


def run_sweep_file(path: str, *, kind: str | None = None, store: str | None = None, executor: str = "inprocess",
                   workers: int = 1, threads: int | None = None, json_out: bool = False, progress: bool = True,
                   dry_run: bool = False) -> int:
    """Run (or list, ``dry_run``) the sweep in ``path``; prints its summary; returns the exit code."""
    from quantbench.report import write_sweep_report
    from quantbench.store import ResultStore
    from quantbench.sweep import expand, load_sweep, run_sweep, sweep_folder

    sweep = load_sweep(path, kind)
    store = store or DEFAULT_STORE
    cells = expand(sweep)
    keys = list(sweep.grid)
    if dry_run:
        done = ResultStore(store).sweep_cells(sweep.name) if Path(store).exists() else {}
        rows = [[c.cell_id, "done" if c.cell_id in done else "pending", c.label(keys)] for c in cells]
        if json_out:
            emit_json([{"cell_id": c.cell_id, "status": r[1], "params": c.params}
                       for c, r in zip(cells, rows, strict=True)])
            return 0
        print(f"sweep {sweep.name} ({sweep.kind}): {len(cells)} cells, {len(done)} finished in {store}")
        print_table(["cell", "status", "parameters"], rows)
        return 0
    out = run_sweep(sweep, store_path=store, executor=executor, workers=workers, progress=progress, threads=threads)
    report = None
    if out.ran or out.skipped:
        report, _ = write_sweep_report(store, sweep.name, sweep_folder(sweep))
    summary = {"sweep": sweep.name, "cells": len(cells), "ran": len(out.ran), "skipped": len(out.skipped),
               "failed": out.failed, "wall_s": out.wall_s, "store": store, "report": str(report) if report else None}
    if json_out:
        emit_json(summary)
    else:
        print(f"sweep {sweep.name}: {len(out.ran)} cells ran, {len(out.skipped)} already finished, "
              f"{len(out.failed)} failed, in {out.wall_s:.1f} s; results in {store}")
        for cid, err in out.failed.items():
            print(f"  failed {cid}: {err}")
        if report:
            print(f"report: {report}")
    return 1 if out.failed else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise QuantbenchError(f"sweep: --workers must be >= 1, got {args.workers}")
    return run_sweep_file(args.file, store=args.store, executor=args.executor, workers=args.workers,
                          threads=args.threads, json_out=args.json, progress=not args.no_progress,
                          dry_run=args.dry_run)


def cmd_bundle(args: argparse.Namespace) -> int:
    from quantbench.bundle import BundleConfig, build_bundle
    from quantbench.config import build

    values = {k: v for k, v in vars(args).items() if k not in ("verb", "func", "json", "no_progress", "debug")}
    if values.get("quantized") and "model" not in values:
        from quantbench.quant.save import read_quantized_meta

        info = read_quantized_meta(values["quantized"]).get("model") or {}
        values["model"] = info.get("name") or "lenet"
        kw = info.get("kwargs") or {}
        values.setdefault("hyper", kw.get("hyper") or {})
        if info.get("input_shape"):
            values.setdefault("input_shape", list(info["input_shape"]))
    cfg = build(BundleConfig, values)
    log = (lambda m: None) if args.no_progress else (lambda m: print(m, file=sys.stderr))
    out = build_bundle(cfg.model, checkpoint=cfg.checkpoint, hyper=cfg.hyper, input_shape=cfg.input_shape,
                       variants=cfg.variants, method=cfg.method, quantized=cfg.quantized, calib=cfg.calib,
                       calib_size=cfg.calib_size, normalize=cfg.normalize, batch_sizes=cfg.batch_sizes,
                       out_dir=cfg.out, make_zip=not cfg.no_zip, formats=cfg.formats or None, log=log,
                       progress=not args.no_progress)
    manifest = json.loads((out / "manifest.json").read_text())
    if args.json:
        emit_json({"bundle": str(out), "zip": None if cfg.no_zip else str(out) + ".zip", "manifest": manifest})
        return 0
    print_table(["scheme", "engine", "file", "bytes", "MACs/image", "sha256"],
                [[m["scheme"], m["engine"], m["file"] + (f" (+{len(m['batch_files']) - 1} batch files)"
                                                          if len(m.get("batch_files", {})) > 1 else ""),
                  f"{m['bytes']:,}", f"{m['macs']:,}", m["sha256"][:16] + "..."] for m in manifest["models"]])
    print(f"\nsample images: {manifest['samples']['source']}")
    print(f"bundle: {out}" + ("" if cfg.no_zip else f" (and {out}.zip)"))
    print("on the device: python3 run_bundle.py --device NAME --out results.json; then: quantbench import results.json")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from quantbench.config import build
    from quantbench.exporting import ExportConfig, available_formats, export_quantized
    from quantbench.quant.save import load_quantized, read_quantized_meta

    values = {k: v for k, v in vars(args).items() if k not in ("verb", "func", "json", "no_progress", "qbm", "debug")}
    cfg = build(ExportConfig, values)
    meta = read_quantized_meta(args.qbm)
    qm = load_quantized(args.qbm)
    shape = tuple(meta["model"].get("input_shape") or ())
    if len(shape) != 3:
        raise QuantbenchError(f"{args.qbm}: records no input shape; it cannot be exported")
    formats = cfg.formats or available_formats()
    samples = None
    if cfg.data:
        from quantbench.experiments.bench import calibration_images

        data, _ = calibration_images(cfg.data, cfg.check_images, shape, cfg.normalize)
        samples = data.tensors()[0]
    files = export_quantized(qm, cfg.out, formats=formats, input_shape=shape, name=Path(args.qbm).stem,
                             samples=samples, progress=not args.no_progress)
    if args.json:
        emit_json({"qbm": args.qbm, "files": [f.as_dict() for f in files]})
        return 0
    print_table(["format", "file", "bytes", "runtime", "max |logit diff| vs simulation", "top-1 agreement"],
                [[f.format, f.path, f"{f.bytes:,}", f.runtime, f"{f.max_abs_diff:.3g}",
                  f"{100 * f.top1_agreement:.1f}% of {f.images}"] for f in files])
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from quantbench.bundle import import_results
    from quantbench.report import write_devices_report
    from quantbench.report.render import run_model_data
    from quantbench.store import ResultStore

    run_id, n = import_results(args.results, store_path=args.store, device=args.device,
                               profile_gmacs=args.profile_gmacs)
    with ResultStore(args.store) as store:
        run = store.run(run_id)
    model = run_model_data(run["config"])[0]
    from quantbench.paths import safe_component

    html, _ = write_devices_report(args.store, model,
                                   args.out or Path(args.store).parent / f"devices-{safe_component(model)}")
    if args.json:
        emit_json({"run_id": run_id, "rows": n, "device": run["config"]["device"], "report": str(html)})
    else:
        print(f"imported {n} rows for device {run['config']['device']} (run {run_id}) into {args.store}")
        print(f"report (every device of {model}): {html}")
    return 0


def _common(p: argparse.ArgumentParser, *, store: bool = False, progress: bool = False) -> None:
    """The flags several tool verbs share, spelled and explained as on the experiment verbs."""
    if store:
        p.add_argument("--store", default=DEFAULT_STORE, metavar="DB",
                       help=f"SQLite results store (default: {DEFAULT_STORE})")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="hide progress bars and progress lines")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last stdout line")


def add_verbs(sub: Any) -> None:
    from quantbench.bundle import BundleConfig
    from quantbench.exporting import ExportConfig

    p = sub.add_parser("bundle", help="a folder/zip to measure a model on a device with only numpy + onnxruntime "
                                      "(or ai-edge-litert for the .tflite files)")
    add_config_flags(p, BundleConfig)
    _common(p, progress=True)
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("export", help="write a quantized model (.qbm) as QDQ ONNX, OpenVINO IR and LiteRT .tflite, "
                                      "each checked against the simulation")
    p.add_argument("qbm", help="a quantized model written by quantize/qat/mixed (.qbm)")
    add_config_flags(p, ExportConfig)
    _common(p, progress=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="store a device's results (from run_bundle.py) and compare devices")
    p.add_argument("results", help="results JSON written by run_bundle.py on the device")
    p.add_argument("--device", help="store under this name instead of the one in the file")
    p.add_argument("--profile-gmacs", type=float, metavar="RATE",
                   help="device rate for the latency estimate (GMAC/s; FLOPs = 2 x MACs); known: "
                        "raspberry-pi-4b, raspberry-pi-zero-2w, nvidia-a100")
    p.add_argument("--out", metavar="DIR", help="report folder (default: devices-MODEL beside the store)")
    _common(p, store=True)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("sweep", help="run an experiment file's grid of cells; resumes, skipping finished cells")
    p.add_argument("file", help="experiment file with a grid and/or cells (see examples/)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and which are finished; run nothing")
    p.add_argument("--executor", default="inprocess",
                   help="inprocess, pool (local processes), ray (local Ray), ray://HOST:PORT (a Ray cluster)")
    p.add_argument("--workers", type=int, default=1, help="parallel cells for pool/ray (default 1)")
    p.add_argument("--threads", type=int, help="intra-op threads per cell (default: cores / workers)")
    _common(p, store=True, progress=True)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="(re)write the HTML/Markdown report of a run or a whole sweep")
    p.add_argument("id", help="run id (or unique prefix) or sweep name")
    p.add_argument("--out", metavar="DIR", help="folder (default: the run's folder, or sweeps/NAME beside the store)")
    _common(p, store=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="paired accuracy, size and latency differences of run B against run A")
    p.add_argument("run_a", help="run id (or unique prefix) of A, the reference")
    p.add_argument("run_b", help="run id (or unique prefix) of B")
    p.add_argument("--out", metavar="DIR", help="report folder (default: compare-A-B beside the store)")
    _common(p, store=True)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("models", help="list the model zoo with parameters and MACs")
    p.add_argument("pattern", nargs="?", default="*", help="glob on model names, e.g. 'resnet*'")
    p.add_argument("--num-classes", type=int, metavar="N", help="count parameters with an N-class head")
    p.add_argument("--no-count", action="store_true", help="skip counting parameters and MACs")
    _common(p, progress=True)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("engines", help="list inference engines, their variants, and why any is unavailable")
    _common(p)
    p.set_defaults(func=cmd_engines)

    p = sub.add_parser("datasets", help="list the data set kinds and their spec syntax")
    _common(p)
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("results", help="list, filter and export stored results")
    p.add_argument("--runs", action="store_true", help="list runs instead of result rows")
    p.add_argument("--run", help="run id (or unique prefix)")
    for name in ("model", "data", "method", "engine", "metric"):
        p.add_argument(f"--{name}", help=f"filter on {name} (SQL LIKE pattern, e.g. 'top%%')")
    p.add_argument("--batch", type=int, help="filter on batch size")
    p.add_argument("--all", action="store_true", help="also rows of runs that failed or were interrupted")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    p.add_argument("--out", metavar="FILE", help="write the export to FILE")
    _common(p, store=True)
    p.set_defaults(func=cmd_results)
