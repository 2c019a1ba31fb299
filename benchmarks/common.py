"""What the benchmark scripts share: where the reference data lives, the missing-data refusal, JSON output.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they import
this module as ``common``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_WEIGHTS = SHARED / "weights" / "resnet20-12fca82f.th"
DEFAULT_DATA = SHARED / "datasets" / "cifar10-jpeg" / "dev"


def reference_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the options every real-data benchmark takes: model, weights, data, normalisation."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="resnet20", help="zoo model name")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="checkpoint file")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="image folder (class subfolders)")
    p.add_argument("--normalize", default="imagenet", help="normalisation preset")
    return p


def missing_reference(prog: str, weights: Path, data: Path) -> bool:
    """True (after saying what is missing, on stderr) when the weights or the data are not there."""
    missing = [f"{what} {path}" for what, path in (("weights", weights), ("data", data)) if not path.exists()]
    if missing:
        print(f"{prog}: not found: {'; '.join(missing)}\n"
              f"  (the defaults expect the shared folder at {SHARED}; pass --weights/--data)", file=sys.stderr)
    return bool(missing)


def drop_text(d: Any) -> str:
    """``drop [lo, hi]`` in points, drop = FP32 - quantized (the negated paired difference)."""
    return f"{-d.diff_points:+6.2f} [{-d.ci_high:+.2f}, {-d.ci_low:+.2f}]"


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """``doc`` as indented JSON (non-JSON values as strings), folders created; says where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {path}")
