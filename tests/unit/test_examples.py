"""Every study file in examples/: its header says how to run it and what it substitutes, and its report holds
each of the study's table/figure families.

Each example declares, in its header comments, ``# families: A, B, ...`` (section titles, figure names or
column/label text the report must contain) and ``# smoke: {...}`` (the keys that shrink it to a seconds-long
run: a small model or synthetic data, one epoch). The slow test runs every example with its smoke keys
through the same verb a user types and checks the rendered report for every family - so a family is only
declared when the report code really produces it for that kind and configuration.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
import yaml

from quantbench.cli import main

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def _header_block(text: str, key: str) -> str:
    """The value of ``# key: ...`` in the header comments, continuation lines (``#   ...``) included."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"# {key}:"):
            value = [line[len(f"# {key}:"):]]
            for more in lines[i + 1:]:
                if not more.startswith("#   "):
                    break
                value.append(more[1:])
            return " ".join(v.strip() for v in value).strip()
    return ""


def families(path: Path) -> list[str]:
    return [f.strip() for f in _header_block(path.read_text(), "families").split(",") if f.strip()]


def smoke(path: Path) -> dict:
    return yaml.safe_load(_header_block(path.read_text(), "smoke")) or {}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_header_gives_the_command_the_substitution_and_the_families(path):
    text = path.read_text()
    head = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert re.search(r"^#\s+quantbench (sweep|split|bench|run|qat|quantize) ", head, re.M), "no one-line command"
    assert families(path), "no '# families:' line"
    assert isinstance(smoke(path), dict) and smoke(path), "no '# smoke: {...}' mapping"
    if re.search(r"\bstudy\b", head, re.I):  # a published study's file says what stands in for its data
        assert re.search(r"substitut", head, re.I), "a study file without its substitution stated"


def _smoke_file(path: Path, tmp_path: Path) -> tuple[Path, dict]:
    data = yaml.safe_load(path.read_text())
    over = smoke(path)
    if "cells" in over or "grid" in over:
        data.pop("cells", None)
        data.pop("grid", None)
    data.update(over)
    data = {k: v for k, v in data.items() if v is not None}
    data["out"] = str(tmp_path / "out")
    f = tmp_path / path.name
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    return f, data


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_report_of_a_smoke_run_names_every_family(path, tmp_path, capsys):
    f, data = _smoke_file(path, tmp_path)
    db = str(tmp_path / "s.db")
    if "cells" in data or "grid" in data:
        code = main(["sweep", str(f), "--store", db, "--no-progress"])
    else:
        code = main([data["kind"], "--config", str(f), "--store", db, "--no-progress"])
    assert code == 0, capsys.readouterr().err[-2000:]
    reports = sorted((tmp_path / "out").rglob("report.html"))
    assert reports, "no report written"
    page = html.unescape(reports[-1].read_text())
    missing = [fam for fam in families(path) if fam not in page]
    assert not missing, f"{path.name}: the report lacks {missing}"
