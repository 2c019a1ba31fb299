"""Open a generated report in headless Chromium: every image must decode and no console error appear."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from quantbench.cli import main

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"

_PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const answer = document.getElementById('answer');
  const first = document.querySelector('h1').nextElementSibling;
  const out = document.createElement('pre'); out.id = 'qb-probe';
  const m = 'QB' + 'PROBE';
  out.textContent = m + JSON.stringify({n: imgs.length, bad: bad, first: first ? first.id : null,
                                        answer: answer ? answer.textContent : ''}) + m;
  document.body.appendChild(out);
});
</script></body>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _check_in_browser(report: Path, tmp_path: Path, shot_name: str, min_images: int) -> None:
    """Every image of ``report`` decodes in headless Chromium, no console error; keep a screenshot."""
    browser = _chromium()
    assert browser is not None
    html = report.read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", _PROBE), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120)
    found = re.search(r"QBPROBE(.*?)QBPROBE", dom.stdout)
    assert found, dom.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["n"] >= min_images and result["bad"] == []
    assert result["first"] == "answer" and len(result["answer"]) > 20  # the report opens with its answer
    console_errors = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln and "ERROR" in ln.upper()
                      or "Uncaught" in ln]
    assert console_errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / shot_name
    subprocess.run([browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_report_renders_every_image_in_chromium(tmp_path, capsys):
    if _chromium() is None:
        pytest.skip("headless Chromium not installed (Debian package 'chromium'; .ci/run installs it)")
    assert main(["run", "--data", "synthetic:n=200,shape=1x8x8,classes=10,seed=0", "--epochs", "2",
                 "--batch-sizes", "1,4", "--store", str(tmp_path / "q.db"), "--min-time-s", "0.01",
                 "--methods", "w8a8:minmax", "--calib-size", "64", "--qat", "w4a4", "--qat-epochs", "1",
                 "--no-progress", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _check_in_browser(Path(rec["report"]), tmp_path, "report.png", min_images=5)


def test_split_report_renders_in_chromium(tmp_path, capsys):
    if _chromium() is None:
        pytest.skip("headless Chromium not installed (Debian package 'chromium'; .ci/run installs it)")
    assert main(["split", "--model", "resnet20", "--data", "synthetic:n=120,shape=3x32x32,classes=10,seed=0",
                 "--train-fraction", "0.5", "--calib-size", "30", "--splits", "1,3", "--qbins", "4,8",
                 "--companding", "none,mulaw", "--store", str(tmp_path / "s.db"), "--out", str(tmp_path / "split"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    _check_in_browser(tmp_path / "split" / "report.html", tmp_path, "report_split.png", min_images=5)


def test_every_report_kind_renders_and_opens_with_its_answer(tmp_path, capsys):
    """recommend, debug, eval, ptq, bench, sweep and compare reports (the split report is the test above): every image decodes,
    the answer comes first, and hostile strings stay text in HTML and Markdown."""
    if _chromium() is None:
        pytest.skip("headless Chromium not installed (Debian package 'chromium'; .ci/run installs it)")
    db = str(tmp_path / "k.db")
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    common = ["--model", "lenet", "--data", "digits", "--store", db, "--no-progress", "--json"]
    reports = {}
    assert main(["eval", *common, "--name", evil]) == 0
    reports["eval"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ptq = []
    for method in ("w8a8:mse", "w4a8:minmax"):
        assert main(["quantize", *common, "--method", method, "--calib-size", "64", "--pretrain-epochs", "1"]) == 0
        ptq.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    reports["ptq"] = ptq[0]
    assert main(["bench", "--model", "lenet", "--engines", "torch", "--batch-sizes", "1,4", "--threads", "1",
                 "--min-time-s", "0.001", "--store", db, "--out", str(tmp_path / "bench"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["compare", ptq[0]["run_id"], ptq[1]["run_id"], "--store", db, "--out", str(tmp_path / "cmp"),
                 "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cmp["accuracy"][0]["paired"]  # both runs scored the same digits test images
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: kinds\nkind: ptq\nout: {tmp_path / 'sw'}\nmodel: lenet\ndata: digits\n"
                     "pretrain_epochs: 1\ncalib_size: 32\ngrid:\n  method: [w8a8:minmax, w4a8:mse]\n")
    assert main(["sweep", str(sweep), "--store", db, "--no-progress", "--threads", "1", "--json"]) == 0
    reports["sweep"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["recommend", *common, "--pretrain-epochs", "1", "--methods", "w8a8:mse", "--control-method", "none",
                 "--engines", "onnxruntime", "--batch-sizes", "4", "--min-time-s", "0.01", "--max-drop", "5", "--rounds", "1",
                 "--calib-size", "64", "--out", str(tmp_path / "rec")]) == 0
    capsys.readouterr()
    assert main(["debug", *common, "--pretrain-epochs", "1", "--method", "w4a4:minmax", "--calib-size", "64",
                 "--debug-images", "64", "--out", str(tmp_path / "dbg")]) == 0
    capsys.readouterr()
    pages = {"recommend": (tmp_path / "rec" / "report.html", 1), "debug": (tmp_path / "dbg" / "report.html", 0),
             "eval": (Path(reports["eval"]["report"]), 0), "ptq": (Path(reports["ptq"]["report"]), 3),
             "bench": (tmp_path / "bench" / "report.html", 1), "compare": (Path(cmp["html"]), 1),
             "sweep": (Path(reports["sweep"]["report"]), 2)}
    for kind, (page, min_images) in pages.items():
        (tmp_path / f"browser-{kind}").mkdir()
        _check_in_browser(page, tmp_path / f"browser-{kind}", f"report_{kind}.png", min_images=min_images)
    html = pages["eval"][0].read_text()
    md = pages["eval"][0].with_name("report.md").read_text()
    for text in (html, md):
        assert "<script>" not in text and "<img src=x" not in text and "&lt;script&gt;" in text
    assert "Sweep: FP32 reference" in pages["sweep"][0].read_text()
    rec_md = pages["recommend"][0].with_name("report.md").read_text()
    assert rec_md.index("Pareto front") < rec_md.index("Results: FP32 vs quantized")  # right under the answer
