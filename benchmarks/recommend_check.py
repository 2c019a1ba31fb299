"""Does ``recommend``'s answer hold when re-measured independently? One run, one verdict per claim.

What: ``quantbench recommend`` on the pretrained CIFAR-10 ResNet20 and the shared CIFAR-10 JPEG dev
set (or any --model/--data), then two independent re-measurements in fresh processes:

* accuracy: ``quantbench quantize --method <chosen method>`` with the same seed and the same
  validation share, so its evaluation images are exactly recommend's evaluation images (which
  no choice saw); the claim holds when the re-measured drop lies inside recommend's paired CI;
* speed: ``quantbench bench --quantized <chosen .qbm>`` on the chosen engine and on every FP32
  engine recommend timed; the claim holds when the re-measured "INT8 / fastest FP32" ratio is
  within 20% of the claimed ratio (both from medians on the same machine, in separate runs).

Timing verdicts are not printed when either run was taken on a busy machine (THE busy test).

Usage:
    .venv/bin/python benchmarks/recommend_check.py [--engines onnxruntime,openvino,torch-int8]
        [--batch-sizes 8,1] [--max-drop 1.0] [--adaround-iters 200] [--out results.json]
    # a model this project has never seen, trained inside the run on a split the evaluation never sees:
    .venv/bin/python benchmarks/recommend_check.py --model benchmarks/holdout_cnn.py:build --no-weights \
        --data-spec digits --normalize auto --pretrain-epochs 15 --train-fraction 0.5 --max-drop 2.0
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import missing_reference, reference_parser, write_json

QB = [sys.executable, "-m", "quantbench"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    print("$ quantbench " + " ".join(args), flush=True)
    proc = subprocess.run([*QB, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"recommend_check: quantbench {args[0]} failed: {proc.stderr.strip()[-2000:]}")
    return proc


def _rows(db: Path, run_id: str) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(db) as con:
        return con.execute("SELECT method, engine, metric, batch, value, extra FROM results WHERE run_id = ?",
                           (run_id,)).fetchall()


def _check_speed(a, work: Path, db: Path, record: dict, chosen: dict) -> dict:
    """Re-time the deployment the answer is about (or, when it claimed no speed-up, the fastest eligible INT8
    one) beside every FP32 engine, in fresh processes, and say whether the claim holds."""
    from quantbench.experiments.recommend import MIN_SPEEDUP
    from quantbench.machine_load import busy_shares, medians_differ

    choice, b = record["choice"], int(record["choice"]["batch"])
    if choice.get("engine"):
        label, engine = chosen["label"], choice["engine"]
    else:  # the claim: no eligible quantized deployment is measurably faster than the fastest FP32
        eligible = {c["label"] for c in record["candidates"] if c["eligible"] and c["label"] != "fp32"}
        deps = [d for d in record["deployments"] if d["label"] in eligible and d["batch"] == b]
        if not deps:
            return {"holds": None, "why": "no eligible quantized deployment was timed"}
        fastest = min(deps, key=lambda d: d["median_ms"])
        label, engine = fastest["label"], fastest["engine"]
    artifact = next(c["artifact"] for c in record["candidates"] if c["label"] == label)
    fp32_engines = sorted({d["engine"] for d in record["deployments"] if d["label"] == "fp32"})
    fp32 = str(work / "rec" / "model_fp32.pt")  # the float model as recommend evaluated it
    bench = _run(["bench", "--model", a.model, "--checkpoint", fp32, "--quantized", artifact, "--engines",
                  ",".join(sorted({engine, *fp32_engines})), "--variants", "fp32,int8", "--batch-sizes", str(b),
                  "--store", str(db), "--json", "--no-progress"])
    cells = [r for r in json.loads(bench.stdout.splitlines()[-1])["records"] if r["batch"] == b]
    best_fp32 = min((r for r in cells if r["variant"] == "fp32"), key=lambda r: r["median_ms"])
    int8 = next(r for r in cells if r["engine"] == engine and r["variant"] == "int8")
    ratio = best_fp32["median_ms"] / int8["median_ms"]
    busy = bool(record["busy"] or busy_shares(r.get("other_cpu_share") for r in cells))
    if choice.get("engine"):
        claimed, span = choice["speedup_vs_best_fp32"], choice.get("speedup_range") or [choice["speedup_vs_best_fp32"]] * 2
        holds = span[0] / 1.2 <= ratio <= span[1] * 1.2  # inside the rounds' range, give or take 20%
        claim = f"{claimed:.2f}x the fastest FP32 ({span[0]:.2f}-{span[1]:.2f}x across rounds)"
    else:
        holds = not (ratio >= MIN_SPEEDUP and medians_differ(int8, best_fp32))
        claim = f"no measurable speed-up ({label} on {engine})"
    print(f"speed: claimed {claim} at batch {b}; re-measured {ratio:.2f}x -> "
          + ("no verdict (busy machine)" if busy else ("HOLDS" if holds else "DOES NOT HOLD")))
    return {"claim": claim, "remeasured_ratio": ratio, "holds": holds, "busy": busy}


def main() -> int:
    p = reference_parser(__doc__)
    p.add_argument("--engines", default="onnxruntime,openvino,torch-int8")
    p.add_argument("--batch-sizes", default="8,1")
    p.add_argument("--max-drop", default="1.0")
    p.add_argument("--methods", default="w8a8:mse,w8a8:mse-bc,w4a8:adaround")
    p.add_argument("--adaround-iters", default="200")
    p.add_argument("--data-spec", default=None, help="any data spec instead of --data (e.g. digits)")
    p.add_argument("--no-weights", action="store_true", help="no checkpoint: the model as built (use with "
                   "--pretrain-epochs, which trains it on a split the evaluation never sees)")
    p.add_argument("--pretrain-epochs", default="0")
    p.add_argument("--train-fraction", default="0.8")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if a.data_spec is None and missing_reference("recommend_check", a.weights, a.data):
        return 2
    work = Path(tempfile.mkdtemp(prefix="quantbench-recommend-check-"))
    db = work / "q.db"
    model = ["--model", a.model] + ([] if a.no_weights else ["--checkpoint", str(a.weights)])
    common = [*model, "--data", a.data_spec or f"imagefolder:{a.data}", "--normalize", a.normalize,
              "--pretrain-epochs", a.pretrain_epochs, "--train-fraction", a.train_fraction, "--seed", "0",
              "--store", str(db), "--no-progress"]
    rec = _run(["recommend", *common, "--engines", a.engines, "--batch-sizes", a.batch_sizes, "--max-drop",
                a.max_drop, "--methods", a.methods, "--adaround-iters", a.adaround_iters, "--out", str(work / "rec"),
                "--json"])
    record = json.loads(rec.stdout.splitlines()[-1])
    print("\n".join(record["answer"]))
    choice = record["choice"]
    chosen = next(c for c in record["candidates"] if c["label"] == choice["label"])
    checks = {"answer": record["answer"], "choice": choice, "machine": record["machine"]}
    if chosen["label"] != "fp32":
        method = chosen["label"].removesuffix("+ac")
        q = _run(["quantize", *common, "--method", method, "--max-drop", a.max_drop, "--out", str(work / "q"),
                  "--json", *(["--adaround-iters", a.adaround_iters] if "adaround" in method else [])])
        qrec = json.loads(q.stdout.splitlines()[-1])
        drop = qrec["drop"]["top1_points"]
        lo, hi = chosen["test_ci"]
        checks["accuracy"] = {"claimed": chosen["test_drop"], "claimed_ci": [lo, hi], "remeasured": drop,
                              "holds": lo <= drop <= hi, "n_images": qrec["n_images"]}
        print(f"accuracy: claimed drop {chosen['test_drop']:+.2f} [{lo:+.2f}, {hi:+.2f}] on {chosen['test_n']} images; "
              f"re-measured {drop:+.2f} on {qrec['n_images']} -> {'HOLDS' if lo <= drop <= hi else 'DOES NOT HOLD'}")
        checks["speed"] = _check_speed(a, work, db, record, chosen)
    if a.out:
        write_json(a.out, checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
