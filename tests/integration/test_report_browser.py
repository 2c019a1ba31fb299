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
  const out = document.createElement('pre'); out.id = 'qb-probe';
  const m = 'QB' + 'PROBE'; out.textContent = m + JSON.stringify({n: imgs.length, bad: bad}) + m;
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
