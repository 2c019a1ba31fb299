"""Re-quantize a stored run's FP32 model with variants of block reconstruction, on the run's own splits.

Why: a reconstruction method that trails another on a model (QDrop behind AdaRound on the hold-out CNN,
docs/benchmarks/ptq.md) has several suspects - the random drop masks, the learned activation steps, the
block-wise loss, the missing re-calibration - and each costs a full reconstruction to test. This script
takes the folder of a finished ``quantbench run`` (its ``config.yaml`` and trained ``model_fp32.pt``),
rebuilds exactly its calibration and evaluation images, and runs each variant side by side: top-1 with
the paired 95% CI against FP32 and against the first variant, the mean cross-entropy (a less noisy signal
than top-1 on 1,000 images) and the quantize time.

A variant is a method label (what ``quantbench quantize --method`` takes), optionally followed by
``@key=value,...`` keyword arguments of :func:`quantbench.quant.brecq.reconstruct` (``drop_prob``,
``act_lr``, ``lr``, ``seed``, ``learn_act``, ``fisher``, ``iters``, ``granularity``) and by ``+recal``
(re-calibrate the activation ranges after the weights are chosen, as the AdaRound path does).

Usage:
    .venv/bin/python benchmarks/reconstruct_variants.py RUN_DIR w4a4:adaround-flint8 \\
        "w4a4:qdrop-flint8@act_lr=0" "w4a4:qdrop-flint8+recal" w4a4:brecq-flint8 [--threads 2] [--out r.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from common import drop_text, write_json

KEYS = {"drop_prob": float, "act_lr": float, "lr": float, "seed": int, "learn_act": lambda v: v == "true",
        "fisher": lambda v: v == "true", "iters": int, "granularity": str,
        "share_input_mask": lambda v: v == "true", "pd_weight": float, "pd_temperature": float}


def parse_variant(text: str) -> tuple[str, dict[str, Any], bool]:
    """``"w4a4:qdrop-flint8@act_lr=0+recal"`` -> ``("w4a4:qdrop-flint8", {"act_lr": 0.0}, True)``.

    Example:
        >>> parse_variant("w4a4:qdrop-flint8@act_lr=0,seed=1+recal")
        ('w4a4:qdrop-flint8', {'act_lr': 0.0, 'seed': 1}, True)
    """
    recal = text.endswith("+recal")
    label, _, kw = text.removesuffix("+recal").partition("@")
    kwargs: dict[str, Any] = {}
    for item in filter(None, kw.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise ValueError(f"variant {text!r}: {item!r} is not key=value with a key of {', '.join(KEYS)}")
        kwargs[key] = KEYS[key](value)
    return label, kwargs, recal


def quantize_variant(model: Any, label: str, kwargs: dict[str, Any], recal: bool, calib: Any) -> Any:
    """The method ``label`` as ``quantize`` runs it, ``kwargs`` passed on to block reconstruction."""
    from quantbench.quant.prepare import calibrate
    from quantbench.quant.ptq import parse_method, quantize_ptq

    cfg = parse_method(label, calib_size=len(calib))  # every calibration image of the run, as `quantize` does
    qm = quantize_ptq(model, cfg, calib, reconstruct_options=kwargs)
    if recal:
        calibrate(qm, calib, n_images=cfg.calib_size, batch_size=cfg.calib_batch_size)
        qm.set_mode("quant")
    return qm.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="folder of a finished `quantbench run` (config.yaml, model_fp32.pt)")
    p.add_argument("variants", nargs="+", help="method[@key=value,...][+recal]; the first is the comparison base")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=None, help="write every row as JSON")
    args = p.parse_args(argv)
    config, weights = args.run_dir / "config.yaml", args.run_dir / "model_fp32.pt"
    if not config.is_file() or not weights.is_file():
        print(f"reconstruct_variants: {args.run_dir} needs config.yaml and model_fp32.pt (a `quantbench run` "
              "folder)", file=sys.stderr)
        return 2
    from quantbench.errors import QuantbenchError
    from quantbench.quant.ptq import parse_method

    try:
        variants = [parse_variant(v) for v in args.variants]
        for text, (label, kwargs, _) in zip(args.variants, variants, strict=True):  # parse_method refuses bad labels
            if parse_method(label).algorithm().reconstruct == "none" and kwargs:  # what quantize_ptq refuses, up front
                raise ValueError(f"variant {text!r}: reconstruction keywords for a method without block reconstruction")
    except (ValueError, QuantbenchError) as e:
        print(f"reconstruct_variants: {e}", file=sys.stderr)
        return 2

    import torch

    from quantbench.config import build, read_yaml_mapping
    from quantbench.experiments.kinds.run import RunExperiment
    from quantbench.experiments.prepare import prepare
    from quantbench.measure.accuracy import evaluate, paired_difference
    from quantbench.measure.environment import environment

    torch.set_num_threads(args.threads)
    raw = read_yaml_mapping(config, "run config")
    raw.pop("kind", None)
    raw.update(checkpoint=str(weights), epochs=0, threads=args.threads)
    cfg = build(RunExperiment, raw)
    prepared = prepare(cfg, None, train=True, calib=True, val_fraction=cfg.val_fraction)
    model = prepared.model.eval()
    print("; ".join(f"{k}: {v}" for k, v in prepared.split.items()), flush=True)
    fp32 = evaluate(model, prepared.test)
    print(f"fp32: top-1 {fp32.top1:.2f}%, loss {fp32.loss:.4f}", flush=True)
    rows: list[dict[str, Any]] = []
    base = None
    for text, (label, kwargs, recal) in zip(args.variants, variants, strict=True):
        t = time.perf_counter()
        qm = quantize_variant(model, label, kwargs, recal, prepared.calib)
        seconds = time.perf_counter() - t
        res = evaluate(qm, prepared.test)
        d = paired_difference(fp32.correct, res.correct)
        vs = paired_difference(base.correct, res.correct) if base is not None else None
        base = base or res
        rows.append({"variant": text, "top1": res.top1, "loss": res.loss, "drop_points": -d.diff_points,
                     "paired_vs_fp32": d.as_dict(), "paired_vs_first": vs.as_dict() if vs else None,
                     "quantize_s": seconds, "choices": dict(qm.notes)})
        first = f"{vs.diff_points:+.2f} [{vs.ci_low:+.2f}, {vs.ci_high:+.2f}]" if vs else "(base)"
        print(f"{text:<44} top-1 {res.top1:6.2f}  loss {res.loss:.4f}  drop {drop_text(d):<24} "
              f"vs first {first:<22} {seconds:6.0f} s" + "".join(f"; {k}: {v}" for k, v in qm.notes.items()),
              flush=True)
    if args.out is not None:
        write_json(args.out, {"benchmark": "reconstruct_variants", "run_dir": str(args.run_dir),
                              "split": prepared.split, "fp32": fp32.as_dict(), "rows": rows,
                              "threads": args.threads, "environment": environment()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
