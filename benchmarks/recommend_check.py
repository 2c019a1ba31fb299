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


def main() -> int:
    p = reference_parser(__doc__)
    p.add_argument("--engines", default="onnxruntime,openvino,torch-int8")
    p.add_argument("--batch-sizes", default="8,1")
    p.add_argument("--max-drop", default="1.0")
    p.add_argument("--methods", default="w8a8:mse,w8a8:mse-bc,w4a8:adaround")
    p.add_argument("--adaround-iters", default="200")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if missing_reference("recommend_check", a.weights, a.data):
        return 2
    work = Path(tempfile.mkdtemp(prefix="quantbench-recommend-check-"))
    db = work / "q.db"
    common = ["--model", a.model, "--checkpoint", str(a.weights), "--data", f"imagefolder:{a.data}",
              "--normalize", a.normalize, "--seed", "0", "--store", str(db), "--no-progress"]
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
        if choice.get("engine"):
            b = str(choice["batch"])
            fp32_engines = sorted({d["engine"] for d in record["deployments"] if d["label"] == "fp32"})
            bench = _run(["bench", *common[:4], "--quantized", chosen["artifact"], "--engines",
                          ",".join(sorted({choice["engine"], *fp32_engines})), "--variants", "fp32,int8",
                          "--batch-sizes", b, "--store", str(db), "--json", "--no-progress"])
            brec = json.loads(bench.stdout.splitlines()[-1])
            cells = [r for r in brec["records"] if r["batch"] == int(b)]
            best_fp32 = min(r["median_ms"] for r in cells if r["variant"] == "fp32")
            int8 = next(r["median_ms"] for r in cells if r["engine"] == choice["engine"] and r["variant"] == "int8")
            ratio = best_fp32 / int8
            claimed = choice["speedup_vs_best_fp32"]
            busy = bool(record["busy"]) or any((r.get("other_cpu_share") or 0) > 0.2 for r in cells)
            holds = abs(ratio / claimed - 1) <= 0.2
            checks["speed"] = {"claimed": claimed, "remeasured": ratio, "holds": holds, "busy": busy}
            print(f"speed: claimed {claimed:.2f}x the fastest FP32 at batch {b}; re-measured {ratio:.2f}x -> "
                  + ("no verdict (busy machine)" if busy else ("HOLDS" if holds else "DOES NOT HOLD")))
    if a.out:
        write_json(a.out, checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
