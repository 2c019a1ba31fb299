"""The verbs that run an experiment: flags from the kind's config, one call, a printer.

Every such verb also takes ``--config FILE`` (an experiment file; one with a grid runs as a
sweep), ``--set KEY=VALUE`` (any config key), ``--json`` and ``--no-progress``.

Example:
    >>> from quantbench.cli import main
    >>> main(["eval", "--model", "lenet", "--data", "digits", "--no-store", "--no-progress"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from quantbench.cli.flags import add_config_flags
from quantbench.cli.output import emit_json, fmt_drop, print_table
from quantbench.errors import QuantbenchError

__all__ = ["EXPERIMENT_VERBS", "add_verbs", "config_from_args"]

_NOT_CONFIG = {"verb", "func", "config", "overrides", "json", "no_progress", "kind", "debug"}


def _print_eval(cfg: Any, out: Any) -> int:
    r = out.record
    lines = [f"{r['model']} on {r['data']}: {r['n_images']} images at {'x'.join(map(str, r['input_shape']))}"]
    for k in sorted(r["topk"], key=int):
        lo, hi = r["ci"][k]
        lines.append(f"  top-{k}: {r['topk'][k]:.2f}%  (95% CI {lo:.2f}-{hi:.2f})")
    lines.append(f"  loss:  {r['loss']:.4f}")
    print("\n".join(lines))
    return 0


def _print_summary(cfg: Any, out: Any) -> int:
    from quantbench.report.tables import summary_table

    rows = [dict(r.as_dict(), batch=r.batch) for r in out.results]
    print()
    print_table(*summary_table(rows))
    print()
    if "checkpoint" in out.record:
        print(f"checkpoint: {out.record['checkpoint']}")
    return 0


def _print_ptq(cfg: Any, out: Any) -> int:
    r = out.record
    fp, q = r["fp32"], r["quant"]
    print(f"{r['model']} on {r['data']}: calibrated on {r['calib_images']} images, evaluated on {r['n_images']}")
    print_table(["variant", "top-1 %", "top-5 %", "size on disk", "drop vs FP32 (points, 95% CI)"], [
        ["fp32", f"{fp['top1']:.2f}", f"{fp['top5'] or 0:.2f}", f"{fp['size_bytes']:,} B", "–"],
        [r["method"], f"{q['top1']:.2f}", f"{q['top5'] or 0:.2f}", f"{q['size_bytes']:,} B", fmt_drop(r["drop"])]])
    if r["layers"]:
        n = r["layers"][0]["n_images"]
        print(f"\nper-layer sensitivity (only that layer quantized), on the first {n} evaluation images:")
        print_table(["layer", "type", "spec", "params", "SQNR dB", "top-1 %", f"FP32 on the same {n} images"],
                    [[x["layer"], x["kind"], x["spec"], str(x["params"]), f"{x['sqnr_db']:.1f}", f"{x['top1']:.2f}",
                      f"{x['fp32_top1']:.2f}"] for x in r["layers"]])
    ac = r.get("accuracy_control")
    if ac:
        verdict = "reached" if ac["met"] else "NOT reached (the best model tried is kept)"
        print(f"\naccuracy control: target drop <= {ac['max_drop']:g} points {verdict}: on {ac['n_val']} validation "
              f"images (never evaluated) drop {ac['val_drop_points']:+.2f}, one-sided {ac['confidence']:.0%} upper "
              f"bound {ac['val_upper_bound']:.2f}")
        if ac["float_layers"]:
            print(f"layers left in float ({ac['float_macs_share']:.1%} of the MACs): {', '.join(ac['float_layers'])}")
        else:
            print("no layer needed to stay in float")
    print(f"\nquantized model: {q['artifact']}")
    return 0


def _variants(fp: dict[str, Any], variants: list[dict[str, Any]]) -> None:
    print_table(["variant", "top-1 %", "size on disk", "drop vs FP32 (points, 95% CI)"],
                [["fp32", f"{fp['top1']:.2f}", f"{fp['size_bytes']:,} B", "–"]]
                + [[v["method"], f"{v['top1']:.2f}", f"{v['size_bytes']:,} B", fmt_drop(v["drop"])] for v in variants])


def _print_qat(cfg: Any, out: Any) -> int:
    r = out.record
    print(f"{r['model']}: fine-tuned on {r['split']['train']}; evaluated on {r['split']['eval']}")
    p = r["ptq"]
    _variants(r["fp32"], [
        {"method": p["method"] + " (PTQ start)", "top1": p["top1"], "size_bytes": p["size_bytes"], "drop": p["drop"]},
        {"method": r["method"], "top1": r["quant"]["top1"], "size_bytes": r["quant"]["size_bytes"], "drop": r["drop"]}])
    ft = r.get("fp32_finetuned")
    if ft:
        d = ft["qat_drop_vs_finetuned"]
        print(f"\nFP32 fine-tuned the same way on the same images: {ft['top1']:.2f}%; QAT is "
              f"{d['top1_points']:+.2f} points below it [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] p={d['p_value']:.3g} "
              "(fine-tuning also adapts to these images; this is the fair reference)")
    ratio = r["qat_vs_fp32_epoch_time"]
    print(f"\nQAT: {len(r['epochs'])} epochs in {r['train_time_s']:.1f} s ({r['qat_epoch_s']:.2f} s/epoch"
          + (f"; FP32 on the same data: {r['fp32_epoch_s']:.2f} s/epoch, QAT {ratio:.1f}x slower per epoch)"
             if ratio else ")"))
    print(f"quantized model: {r['quant']['artifact']}")
    return 0


def _print_mixed(cfg: Any, out: Any) -> int:
    r = out.record
    m = r["mixed"]
    print(f"{r['model']}: calibrated on {r['split']['calib']}; evaluated on {r['split']['eval']}")
    print_table(["layer", "type", "params", "bits", f"damage ({cfg.metric})"],
                [[t["layer"], t["kind"], f"{t['params']:,}", str(t["bits"]), f"{t['damage']:.3g}"] for t in m["table"]])
    print(f"\naverage weight bits {m['average_bits']:.2f}; predicted top-1 (calibration images) "
          f"{m['predicted_top1']:.2f}%; measured below\n")
    u = r["uniform"]
    _variants(r["fp32"], [{"method": u["method"], "top1": u["top1"], "size_bytes": u["size_bytes"], "drop": u["drop"]},
                          {"method": r["method"], "top1": r["quant"]["top1"], "size_bytes": r["quant"]["size_bytes"],
                           "drop": r["drop"]}])
    print(f"\nquantized model: {r['quant']['artifact']}")
    return 0


def _print_points(points: list[dict[str, Any]]) -> None:
    print_table(["split", "after", "feature shape", "edge MMACs", "cloud MMACs"],
                [[str(p["index"]), p["label"], "x".join(map(str, p["feature_shape"])), f"{p['edge_macs'] / 1e6:.2f}",
                  f"{p['cloud_macs'] / 1e6:.2f}"] for p in points])
    print("\nMACs per image (FLOPs = 2 x MACs); --splits takes the indices in the first column.")


def _print_split(cfg: Any, out: Any) -> int:
    r = out.record
    if cfg.list_splits:
        print(f"{r['model']} at input {'x'.join(map(str, r['input_shape']))}: {len(r['points'])} split points")
        _print_points(r["points"])
        return 0
    print(f"{r['model']}: evaluated on {r['n_images']} images ({r['split']['eval']}); codec {r['codec']}, "
          f"range {r['range']}")
    print_table(["split", "after", "qbins", "companding", "noise", "top-1 %", "bpp", "CR", "kB/sample", "edge MMACs",
                 "cloud MMACs"],
                [[str(x["split"]), x["block"], str(x["qbins"]), x["companding"], x["noise"], f"{x['top1']:.2f}",
                  f"{x['bpp']:.3f}", f"{x['cr']:.1f}", f"{x['kb_per_sample']:.3f}", f"{x['edge_macs'] / 1e6:.1f}",
                  f"{x['cloud_macs'] / 1e6:.1f}"] for x in r["records"]])
    if r["fp32_top1"] is not None:
        print(f"\nFP32 top-1 {r['fp32_top1']:.2f}% on the same images")
    if r.get("points"):
        from quantbench.report.split_compute import TITLE, compute_table

        print(f"\n{TITLE}:")
        print_table(*compute_table(r["points"], r.get("edge"), r.get("cloud")))
    if r.get("edge"):
        print("latency model: " + ", ".join(f"{side} {d['name']} ({d['source']}, {d['gflops']:.3g} GFLOPS)"
                                            for side, d in (("edge", r["edge"]), ("cloud", r["cloud"]))))
    return 0


def _print_bench(cfg: Any, out: Any) -> int:
    from quantbench.report.tables import human_bytes

    r = out.record

    def fmt(v: float | None, f: str) -> str:
        return "–" if v is None else f.format(v)

    c, h, w = r["input_shape"]
    print(f"\n{r['model']} ({c}x{h}x{w}, {r['per_image_macs'] / 1e6:.1f} MMACs per image; int8 scales: "
          f"{r['quantized_from']})")
    def median(x: dict[str, Any]) -> str:  # "0.710 [0.690, 0.740]": the median and its bootstrap 95% interval
        lo, hi = x.get("median_ci_low_ms"), x.get("median_ci_high_ms")
        return f"{x['median_ms']:.3f}" + ("" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]")

    print_table(["engine", "variant", "batch", "median ms [95% CI]", "p90 ms", "images/s", "GMAC/s", "% of peak",
                 "x fp32", "x torch fp32", "peak RSS"],
                [[x["engine"], x["variant"], str(x["batch"]), median(x), f"{x['p90_ms']:.3f}",
                  fmt(x["throughput_ips"], "{:.1f}"), fmt(x["gmacs_per_s"], "{:.1f}"),
                  fmt(x["fraction_of_peak"] and 100 * x["fraction_of_peak"], "{:.0f}%"),
                  fmt(x["speedup_vs_fp32"], "{:.2f}"), fmt(x["speedup_vs_torch_fp32"], "{:.2f}"),
                  human_bytes(x["peak_rss_bytes"]) if x["peak_rss_bytes"] else "–"] for x in r["records"]])
    for s in r["skipped"]:
        print(f"  skipped {s['engine']} {s['variant']}: {s['reason']}")
    if r["peaks"]:
        print("\nmachine peaks (dense GEMM): " + ", ".join(
            f"{k} {v['gmacs_per_s']:.0f} GMAC/s" for k, v in r["peaks"].items())
            + f" at {next(iter(r['peaks'].values()))['threads']} thread(s)")
    if r["findings"]:
        print("\nfindings:")
        for line in r["findings"]:
            print(f"  - {line}")
    return 0


def _print_recommend(cfg: Any, out: Any) -> int:
    r = out.record
    print()
    for line in r["answer"]:
        print(line)
    if r["avoid"]:
        print("\navoid:")
        for line in r["avoid"]:
            print(f"  - {line}")
    print(f"\nall deployments (* = Pareto front over drop, size and latency at batch {r['batch']}); drops on "
          f"{r['split'].get('eval', 'the evaluation images')}:")
    print_table(r["table"]["header"], r["table"]["rows"])
    for s in r["skipped"]:
        if s.get("variant") != "*":
            print(f"  not deployed: {s['method']} on {s['engine']} {s['variant']}: {s['reason'][:160]}")
    return 0


def _print_lint(cfg: Any, out: Any) -> int:
    from quantbench.quant.lint import Finding, format_findings

    findings = [Finding(**f) for f in out.record["findings"]]
    print(f"{out.record['model']}: {len(findings)} finding(s)")
    print(format_findings(findings))
    return 1 if cfg.strict and any(f.severity in ("error", "warning") for f in findings) else 0


def _print_debug(cfg: Any, out: Any) -> int:
    r = out.record
    layers = r["layers"]

    def db(v: float | None) -> str:
        return "inf" if v is None else f"{v:.1f}"

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f}"

    print(f"{r['model']} {r['method']} ({r['quantized_from']}): top-1 FP32 {r['fp32_top1']:.2f}% vs quantized "
          f"{r['quant_top1']:.2f}% on the same {r['n_images']} evaluation images")
    top = layers[0]
    lint = "; ".join(f"lint {f['rule']}: {f['message']}" for f in top["lint"])
    if top["recovery_points"] > 0:
        print(f"Quantizing {top['layer']} loses most: leaving it in float recovers {top['recovery_points']:+.1f} "
              f"points (isolated SQNR {db(top['isolated']['sqnr_db'])} dB" + (f"; {lint}" if lint else "") + ")")
    else:
        print(f"No single layer stands out: leaving any one of them in float recovers at most "
              f"{top['recovery_points']:+.1f} points; lowest isolated SQNR first below")
    print()
    print_table(["rank", "layer", "type", "spec", "float recovers (points)", "top-1 % layer in float",
                 "isolated SQNR dB", "cumulative SQNR dB", "cumulative cosine", "cumulative max |err|",
                 "input clipped %", "weights clipped %", "lint"],
                [[str(x["rank"]), x["layer"], x["kind"], x["spec"], f"{x['recovery_points']:+.2f}",
                  f"{x['top1_layer_float']:.2f}", db(x["isolated"]["sqnr_db"]), db(x["cumulative"]["sqnr_db"]),
                  f"{x['cumulative']['cosine']:.4f}", f"{x['cumulative']['max_abs_err']:.3g}",
                  pct(x["act_clip_fraction"]), pct(x["weight_clip_fraction"]),
                  ", ".join(f["rule"] for f in x["lint"]) or "–"] for x in layers])
    print("\nisolated: only that layer's weight and input quantizers, on the float network's input of the layer; "
          "cumulative: the whole model quantized")
    return 0


# verb -> (kind, printer, help); the kind's config gives the flags
EXPERIMENT_VERBS: dict[str, tuple[str, Callable[[Any, Any], int]]] = {
    "run": ("run", _print_summary),
    "train": ("train", _print_summary),
    "eval": ("eval", _print_eval),
    "quantize": ("ptq", _print_ptq),
    "qat": ("qat", _print_qat),
    "mixed": ("mixed", _print_mixed),
    "split": ("split", _print_split),
    "bench": ("bench", _print_bench),
    "lint": ("lint", _print_lint),
    "debug": ("debug", _print_debug),
    "recommend": ("recommend", _print_recommend),
}


def add_verbs(sub: Any) -> None:
    from quantbench.experiments import kinds  # noqa: F401 - registers the kinds
    from quantbench.experiments.layer import KINDS

    for verb, (kind, _printer) in EXPERIMENT_VERBS.items():
        k = KINDS.get(kind)
        p = sub.add_parser(verb, help=k.help.replace("%", "%%"), description=k.help.replace("%", "%%"))
        p.add_argument("--config", metavar="FILE", help="experiment file (YAML; keys are these flags with _; a file "
                       "with grid/cells runs as a sweep); flags on the command line override it")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="set any config key, e.g. --set calib_size=256 (repeatable)")
        add_config_flags(p, k.config)
        p.add_argument("--json", action="store_true", help="print the result as JSON on the last stdout line")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars and progress lines")
        p.set_defaults(func=cmd_experiment, kind=kind)


def config_from_args(kind: str, args: argparse.Namespace, file_values: dict[str, Any] | None = None) -> Any:
    """The kind's config: file values, then typed flags, then ``--set`` overrides (later wins)."""
    import yaml

    from quantbench.experiments.files import merge_cell
    from quantbench.experiments.layer import config_for

    flags = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    sets: dict[str, Any] = {}
    for item in getattr(args, "overrides", []) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise QuantbenchError(f"--set {item!r}: expected KEY=VALUE, e.g. calib_size=256")
        try:
            sets[key.strip()] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            sets[key.strip()] = raw
    return config_for(kind, merge_cell(file_values or {}, flags, sets))


def cmd_experiment(args: argparse.Namespace) -> int:
    from quantbench.experiments.layer import run_experiment

    verb = args.verb
    kind, printer = EXPERIMENT_VERBS[verb]
    file_values: dict[str, Any] = {}
    if args.config:
        from quantbench.experiments.files import read_experiment_file

        f = read_experiment_file(args.config, kind)
        if f.is_sweep:
            from quantbench.cli.tool_verbs import run_sweep_file

            return run_sweep_file(args.config, kind=kind, store=getattr(args, "store", None),
                                  threads=getattr(args, "threads", None), json_out=args.json,
                                  progress=not args.no_progress)
        file_values = f.values
    try:
        cfg = config_from_args(kind, args, file_values)
    except QuantbenchError as exc:  # a bad value that came from the file: name the file too
        key = str(exc).removeprefix("config: ").split(" ", 1)[0].split("[", 1)[0].split(".", 1)[0]
        if args.config and key in file_values and key not in vars(args):
            raise QuantbenchError(f"{args.config}: {exc}") from None
        raise
    def log(message: str) -> None:  # --no-progress silences progress lines, never warnings
        if not args.no_progress or message.startswith("warning"):
            print(message, file=sys.stderr)

    outcome = run_experiment(cfg, progress=not args.no_progress, log=log)
    if args.json:
        if kind in ("run", "train"):  # the whole table, as the summary prints it
            outcome.record["results"] = [r.as_dict() for r in outcome.results]
        emit_json(outcome.record)
        return 1 if kind == "lint" and cfg.strict and any(
            f["severity"] in ("error", "warning") for f in outcome.record["findings"]) else 0
    code = printer(cfg, outcome)
    if outcome.run_id:
        print(f"\nresults stored in {cfg.store} (run {outcome.run_id})\nreport: {outcome.report_html}")
    return code
