"""4-bit and 2-bit post-training quantization: round-to-nearest, AdaRound, BRECQ, QDrop, side by side.

What: for the pretrained CIFAR-10 ResNet-20 (shared weights) and a ResNet-56-shaped network on the
shared CIFAR-10 JPEG dev set (500 calibration / 4,500 evaluation images, stratified and seeded), each
method row quantizes the model with ``quantize_ptq`` (the registered algorithms, exactly what
``quantbench quantize --method LABEL`` runs) and prints top-1 with its Wilson 95% CI, the drop
against FP32 on the same images with its paired (Newcombe) 95% CI and exact McNemar p, and the wall
time of quantizing. ``-flint8`` rows keep the first and last layer at 8 bits; rows without it are
all-low-bit. BRECQ/QDrop rows put low-bit weights on an asymmetric grid (their published recipe;
``-noasym`` rows: symmetric), the other methods on a symmetric one (``-asym`` rows: asymmetric). Inputs of
residual adds and pooling take 8 bits or the activations' bits below 8-bit activations, whichever matches the
float model better on the calibration images (``-jint8`` / ``-jsame`` rows: fixed; 8 bits was the fixed default
of session 11, the activations' bits the placement before 2026-12-04). ``--iters`` takes a comma list: each reconstruction row runs at each count (the
iterations-vs-drop measurement behind the default); ``default`` (the default) is each algorithm's own
count, what ``quantize`` uses (AdaRound 1,000 steps per layer, BRECQ/QDrop 3,000 per block). The published ImageNet records the issue quotes
are printed beside the table, labelled as theirs: other data, other models, not comparable numbers.

ResNet-56 has no shared pretrained weights. ``resnet56`` here is built from the pretrained ResNet-20:
blocks 0, 3 and 6 of each stage are ResNet-20's three blocks, the 18 other blocks are residual
branches with Kaiming-random convolutions and BatchNorm scale ``--r56-gamma`` (so they perturb the
signal without erasing it). It has ResNet-56's shape, depth and cost (57 quantized layers), not a
trained ResNet-56's weights; its FP32 accuracy is printed, and every drop is against it.

Targets (issue 19 on ResNet-20; issue 16 on ResNet-56): W4A4 QDrop drop <= 1.0 and W2A4 QDrop drop
<= 5 points, each quantized within 15 minutes; W4A8 AdaRound on ResNet-56 within 8 minutes with a
drop <= 1.5 points. The verdict lines name the row they judge.

Usage:
    .venv/bin/python benchmarks/ptq_lowbit.py [--models resnet20,resnet56] [--rows w4a4:qdrop-flint8,...]
        [--iters default|N,N,...] [--threads 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from common import drop_text, missing_reference, reference_parser, write_json
from reconstruct_variants import parse_variant

ROWS = (  # brecq/qdrop: asymmetric low-bit weights by default (-noasym: symmetric), others symmetric (-asym); -jsame:
    # 4-bit inputs of the residual adds, -jint8: 8-bit (by default: the one closer to FP32 on the calibration images)
    "w4a8:minmax", "w4a8:mse", "w4a8:mse-asym", "w4a8:adaround", "w4a8:brecq", "w4a8:qdrop",
    "w4a4:mse-flint8", "w4a4:adaround-flint8", "w4a4:adaround-asym-flint8", "w4a4:brecq-flint8",
    "w4a4:qdrop-flint8", "w4a4:qdrop-noasym-flint8", "w4a4:qdrop-flint8-jsame", "w4a4:qdrop-flint8-jint8",
    "w4a4:qdrop",
    "w2a4:mse-flint8", "w2a4:adaround-flint8", "w2a4:brecq-flint8", "w2a4:qdrop-flint8", "w2a4:qdrop-noasym-flint8",
    "w2a4:qdrop",
)
RECONSTRUCTING = ("adaround", "brecq", "qdrop")
TARGETS = (  # (model, row, largest drop in points, longest quantize time in s, name)
    ("resnet20", "w4a4:qdrop-flint8", 1.0, 900.0, "ResNet-20 W4A4 QDrop drop <= 1.0 within 15 min"),
    ("resnet20", "w2a4:qdrop-flint8", 5.0, 900.0, "ResNet-20 W2A4 QDrop drop <= 5 within 15 min"),
    ("resnet56", "w4a8:adaround", 1.5, 480.0, "ResNet-56 W4A8 AdaRound drop <= 1.5 within 8 min"),
)
PUBLISHED = """Published post-training records (theirs, ImageNet top-1 %, not these data; quoted in issue 19):
  MQBench benchmark, ResNet-18 (FP32 71.06): W4A4 AdaRound 68.67, BRECQ 68.52, QDrop 68.84;
                                             W2A4 AdaRound 62.31, BRECQ 63.56, QDrop 64.49
  MQBench benchmark, MobileNetV2 (FP32 72.68): W4A4 AdaRound 65.74, QDrop 68.13
  PD-Quant paper, ResNet-18: W2A4 65.07
  (their first/last layers: 8-bit, as in our -flint8 rows)"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = reference_parser(__doc__)
    p.add_argument("--models", default="resnet20,resnet56", help="comma list of: resnet20, resnet56")
    p.add_argument("--rows", default=",".join(ROWS), help="comma list of method labels (any quantize --method), each optionally "
                   "followed by @key=value,... keywords of block reconstruction (as in reconstruct_variants.py)")
    p.add_argument("--iters", default="default",
                   help="reconstruction steps per layer/block, a comma list sweeps; 'default': each algorithm's own")
    p.add_argument("--n-calib", type=int, default=500, help="calibration images (the rest: evaluation)")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--r56-gamma", type=float, default=0.1, help="BN scale of ResNet-56's added residual branches")
    p.add_argument("--batch", type=int, default=250, help="images per evaluation batch")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=None, help="write every row and verdict as JSON")
    p.add_argument("--progress", action="store_true", help="per-layer/per-block progress on stderr")
    return p.parse_args(argv)


def resnet56_from_resnet20(weights: Path, gamma: float, seed: int = 0) -> torch.nn.Module:
    """ResNet-56's shape with the pretrained ResNet-20's blocks at positions 0, 3, 6 of each stage.

    The other blocks are random residual branches (Kaiming convolutions, BN scale ``gamma``,
    zero shift, unit running variance): a deep network whose quantization error accumulates over
    57 layers like a real ResNet-56's, whose float function stays close to ResNet-20's.

    Example:
        >>> net = resnet56_from_resnet20(DEFAULT_WEIGHTS, 0.1)  # doctest: +SKIP
    """
    from quantbench.models import build_model, load_checkpoint

    torch.manual_seed(seed)
    r20 = load_checkpoint(build_model("resnet20"), weights).eval()
    r56 = build_model("resnet56")
    for stage in ("layer1", "layer2", "layer3"):
        for j, block in enumerate(getattr(r56, stage)):
            if j % 3 == 0:
                block.load_state_dict(getattr(r20, stage)[j // 3].state_dict())
            else:
                torch.nn.init.constant_(block.bn2.weight, gamma)
                torch.nn.init.zeros_(block.bn2.bias)
    own = {k: v for k, v in r20.state_dict().items() if not k.startswith("layer")}
    r56.load_state_dict(own, strict=False)
    return r56.eval()


def split_rows(text: str) -> list[str]:
    """The ``--rows`` list: commas separate rows, except before a further ``key=value`` of a row's options.

    Example:
        >>> split_rows("w4a4:mse-flint8,w4a4:qdrop-flint8@fisher=true,seed=1")
        ['w4a4:mse-flint8', 'w4a4:qdrop-flint8@fisher=true,seed=1']
    """
    rows: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if rows and "@" in rows[-1] and "=" in part and ":" not in part:
            rows[-1] += "," + part
        elif part:
            rows.append(part)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    load_start = [round(v, 2) for v in os.getloadavg()]
    if missing_reference("ptq_lowbit", args.weights, args.data):
        return 1
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = split_rows(args.rows)
    try:
        iters = [None if i.strip() == "default" else int(i) for i in args.iters.split(",") if i.strip()]
    except ValueError:
        iters = []
    if (not models or set(models) - {"resnet20", "resnet56"} or not rows or not iters
            or min((i for i in iters if i is not None), default=1) < 1):
        print("ptq_lowbit: --models takes resnet20,resnet56; --rows method labels; --iters 'default' or integers >= 1",
              file=sys.stderr)
        return 2

    from quantbench.data import open_dataset, split_dataset
    from quantbench.measure.accuracy import evaluate, paired_difference
    from quantbench.measure.environment import environment
    from quantbench.models import build_model, load_checkpoint
    from quantbench.quant.ptq import parse_method, quantize_ptq

    torch.set_num_threads(args.threads)
    from quantbench.errors import QuantbenchError

    try:  # a row is a method label, optionally with @key=value reconstruction keywords; refused before any work
        variants = [parse_variant(r) for r in rows]
        if any(recal for _, _, recal in variants):
            raise ValueError("+recal is reconstruct_variants.py's; rows here take method[@key=value,...]")
        methods = [(parse_method(label, calib_size=args.n_calib), kw) for label, kw, _ in variants]
        for cfg, kw in methods:
            if kw and cfg.algorithm().reconstruct == "none":
                raise ValueError(f"{cfg.label()}: reconstruction keywords for a method without block reconstruction")
    except (ValueError, QuantbenchError) as e:
        print(f"ptq_lowbit: {e}", file=sys.stderr)
        return 2
    spec = f"imagefolder:{args.data}"
    ds = open_dataset(spec, normalize=args.normalize)
    frac = args.n_calib / len(ds)
    parts = split_dataset(ds, {"calib": frac, "test": 1.0 - frac}, seed=args.seed)
    calib, test = parts["calib"].tensors(), parts["test"].tensors()
    print(f"data: {spec} ({args.normalize}), {len(calib[0])} calibration / {len(test[0])} evaluation images, "
          f"seed {args.seed}; {args.threads} threads; load average {load_start}", flush=True)

    results: list[dict[str, Any]] = []
    fp32s: dict[str, Any] = {}
    for name in models:
        if name == "resnet20":
            model = load_checkpoint(build_model("resnet20"), args.weights).eval()
        else:
            model = resnet56_from_resnet20(args.weights, args.r56_gamma)
        fp32 = fp32s[name] = evaluate(model, test, batch_size=args.batch)
        print(f"{name}: fp32 top-1 {fp32.top1:.2f}%", flush=True)
        for cfg, kw in methods:
            reconstructs = cfg.algo.split("-")[0] in RECONSTRUCTING
            counts = iters if reconstructs else [None]
            for n_iter in counts:
                cfg_n = parse_method(cfg.label(), calib_size=len(calib[0]), adaround_iters=n_iter)
                t = time.perf_counter()
                qm = quantize_ptq(model, cfg_n, calib, progress=args.progress, reconstruct_options=kw or None)
                quant_s = time.perf_counter() - t
                res = evaluate(qm, test, batch_size=args.batch)
                d = paired_difference(fp32.correct, res.correct)
                opts = "".join(f",{k}={v}" for k, v in kw.items()).replace(",", "@", 1)
                shown = cfg_n.label() + opts + (f" @{cfg_n.iterations()}" if reconstructs else "")
                results.append({"model": name, "row": cfg.label() + opts, "shown": shown, "options": kw,
                                "iters": cfg_n.iterations() if reconstructs else None, "cfg": cfg_n, "result": res,
                                "choices": dict(qm.notes),
                                "diff": d, "quant_s": quant_s, "load": [round(v, 2) for v in os.getloadavg()]})
                print(f"  {name} {shown:<30} top-1 {res.top1:6.2f}%  drop {-d.diff_points:+.2f}  "
                      f"(quantize {quant_s:6.1f} s)" + "".join(f"; {k}: {v}" for k, v in qm.notes.items()), flush=True)

    print(f"\n{len(calib[0])} calibration / {len(test[0])} evaluation images (seed {args.seed}); "
          "drop = FP32 - quantized, points (positive: a loss); @N = reconstruction steps per layer (AdaRound) "
          "or per block (BRECQ, QDrop); -flint8: first/last layer 8-bit, otherwise all layers low-bit; low-bit "
          "weights asymmetric for BRECQ/QDrop and -asym rows, symmetric for the others and -noasym rows; inputs "
          "of residual adds and pooling 8-bit or at the activations' bits, chosen on the calibration images "
          "(-jint8 / -jsame rows: fixed)")
    head = (f"{'model':<9} {'method':<30} {'top-1 % [95% CI]':<22} {'drop [paired 95% CI]':<24} {'McNemar p':>9}"
            f" {'quantize s':>10}  load avg")
    print(head)
    print("-" * len(head))
    for name in models:
        f = fp32s[name]
        print(f"{name:<9} {'fp32':<30} {f.top1:6.2f} [{f.ci[1][0]:.2f}, {f.ci[1][1]:.2f}]  {'(reference)':<24}")
        for r in (r for r in results if r["model"] == name):
            res, d = r["result"], r["diff"]
            ci = f"{res.top1:6.2f} [{res.ci[1][0]:.2f}, {res.ci[1][1]:.2f}]"
            print(f"{name:<9} {r['shown']:<30} {ci:<22} {drop_text(d):<24} {d.p_value:9.3g} {r['quant_s']:10.1f}"
                  f"  {r['load'][0]}")
    print()
    print(PUBLISHED)
    print()
    verdicts = []
    for name, row, limit, seconds, what in TARGETS:
        cands = [r for r in results if r["model"] == name and r["row"] == row]
        for r in cands:
            d = r["diff"]
            drop, lo, hi = -d.diff_points, -d.ci_high, -d.ci_low
            ok = drop <= limit and r["quant_s"] <= seconds
            verdicts.append({"target": what, "row": r["shown"], "drop_points": drop, "drop_ci": [lo, hi],
                             "p_value": d.p_value, "quantize_s": r["quant_s"], "pass": ok})
            print(f"{'PASS' if ok else 'FAIL'}  {what}: {r['shown']} drop {drop:+.2f} [{lo:+.2f}, {hi:+.2f}] "
                  f"(McNemar p {d.p_value:.3g}), quantized in {r['quant_s']:.0f} s"
                  f"{'; the whole CI is within the drop target' if hi <= limit else ''}")
    total = time.perf_counter() - t_start
    load = [round(v, 2) for v in os.getloadavg()]
    print(f"total run time {total:.1f} s ({args.threads} threads, torch {torch.__version__}); load average at "
          f"start {load_start}, at end {load} (wall-clock times shift with other work on the machine)")
    if args.out is not None:
        write_json(args.out, {
            "benchmark": "ptq_lowbit", "models": models, "weights": str(args.weights), "data": spec,
            "seed": args.seed, "n_calib": len(calib[0]), "n_test": len(test[0]), "threads": args.threads,
            "r56_gamma": args.r56_gamma, "fp32": {k: v.as_dict() for k, v in fp32s.items()},
            "rows": [{"model": r["model"], "label": r["cfg"].label(), "options": r["options"], "iters": r["iters"],
                      "ptq_config": asdict(r["cfg"]), **r["result"].as_dict(), "drop_points": -r["diff"].diff_points,
                      "paired_vs_fp32": r["diff"].as_dict(), "quantize_s": r["quant_s"], "load_average": r["load"],
                      "choices": r["choices"]}
                     for r in results],
            "targets": verdicts, "total_s": total, "load_average_start": load_start, "load_average_end": load,
            "environment": environment(),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
