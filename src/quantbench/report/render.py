"""Self-contained HTML and Markdown reports for one stored run.

Built from the store alone (run row + result rows), so ``quantbench report RUN`` can
regenerate any past run's report. The HTML embeds its figures as base64 PNGs and its CSS,
so the single file opens anywhere, offline; the Markdown links PNG files in ``figures/``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError
from quantbench.report.answer import ANSWER_METRIC, answer_lines
from quantbench.report.figures import Figure, make_figures, matplotlib_available
from quantbench.report.split_compute import TITLE as SPLIT_COMPUTE_TITLE
from quantbench.report.split_compute import split_compute_table
from quantbench.report.tables import (
    bench_records,
    bench_table,
    busy_machine_lines,
    device_ceiling_table,
    device_table,
    latency_table,
    peaks_table,
    recover_table,
    sensitivity_table,
    speed_findings,
    split_table,
    summary_table,
    training_table,
)
from quantbench.store import ResultStore

DEFINITIONS = [
    ("Size", "bytes of the saved model file on disk; for quantized models the integer weights are really "
             "packed (INT8 one per byte, INT4 two per byte) and scales/zero-points are included."),
    ("MACs / FLOPs", "multiply-accumulate operations of conv and linear layers per image; FLOPs = 2 x MACs."),
    ("Latency", "wall-clock time of one batch measured by one function: warm-up runs first, then repeated "
                "runs; median and 90th percentile reported with thread count and batch size."),
    ("Accuracy", "top-1/top-k in percent with a 95% Wilson confidence interval."),
    ("Accuracy drop", "points of top-1 lost versus the FP32 model evaluated on the same images in the same "
                      "run, with a paired 95% confidence interval (Newcombe) and McNemar's exact p-value."),
]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}figure{margin:1em 0}.answer{font-size:1.1em;background:#f4f8ff;border-left:4px solid #4C72B0;padding:.4em 1em}
.answer p{margin:.4em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555;max-width:900px}code{background:#f5f5f5;padding:0 .2em}
dl dt{font-weight:600}dl dd{margin:0 0 .5em 1em}
"""


def _html_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _md_escape(text: Any) -> str:
    """User strings in Markdown: HTML-escaped (viewers render inline HTML) and table-safe.

    Example:
        >>> _md_escape("<img src=x onerror=alert(1)>")
        '&lt;img src=x onerror=alert(1)&gt;'
    """
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _environment_rows(run: dict[str, Any]) -> list[list[str]]:
    env = run["environment"]
    pkgs = env.get("packages", {}) or {}
    rows = [["run id", run["run_id"]], ["status", run["status"]], ["created", run["created"]],
            ["git commit", str(env.get("git_sha"))], ["CPU", str(env.get("cpu_model"))],
            ["CPU flags", ", ".join(k for k, v in (env.get("cpu_flags") or {}).items() if v)],
            ["logical cores", str(env.get("logical_cores"))], ["torch threads", str(env.get("torch_threads"))],
            ["memory", f"{(env.get('memory_total_bytes') or 0) / 2**30:.1f} GiB"],
            ["OS", str(env.get("os"))], ["python", str(env.get("python_version"))]]
    rows += [[name, str(ver)] for name, ver in sorted(pkgs.items()) if ver]
    return rows


Section = tuple[str, tuple[list[str], list[list[str]]]]


def _sections(run: dict[str, Any], rows: list[dict[str, Any]], lead: Sequence[Section] = ()) -> list[Section]:
    """The report's tables in reading order; a table with no rows is left out (no empty section).

    A run's ``answer`` row may carry the table its answer was read from (``extra["table"]``: title,
    header, rows - e.g. recommend's Pareto table); it comes first, right under the answer."""
    own = [(str(t.get("title") or "The answer's table"), ([str(h) for h in t.get("header", [])],
                                                          [[str(c) for c in row] for row in t.get("rows", [])]))
           for r in rows if r["metric"] == ANSWER_METRIC
           for t in [(r.get("extra") or {}).get("table")] if isinstance(t, dict)]
    out = [*own, *lead, ("Results: FP32 vs quantized", summary_table(rows))]
    busy = busy_machine_lines(rows)
    if busy:
        out.insert(0, ("Measurement warning", (["read this before the latencies"], [[line] for line in busy])))
    tt = training_table(rows)
    if tt[1]:
        out.append(("Training", tt))
    cells = bench_records(rows)
    if cells:
        lines = speed_findings(cells)
        if lines:
            out.append(("Findings", (["what this run measured, in plain words"], [[line] for line in lines])))
        out.append(("Engines: latency, throughput and speed-up", bench_table(rows)))
        pt = peaks_table(rows)
        if pt[1]:
            out.append(("This machine's peaks (dense GEMM)", pt))
    else:
        lt = latency_table(rows)
        if lt[1]:
            out.append(("Latency and throughput", lt))
    spt = split_table(rows)
    if spt[1]:
        out.append(("Split computing", spt))
        out.append((SPLIT_COMPUTE_TITLE, split_compute_table(rows)))
        rt = recover_table(rows)
        if rt[1]:
            out.append(("Anonymization: can the input be recovered from the features?", rt))
    dt = device_table(rows)
    if dt[1]:
        out.append(("Devices side by side", dt))
    ct = device_ceiling_table(rows)
    if ct[1]:
        out.append(("Devices' GEMM ceilings (measured on each device)", ct))
    st = sensitivity_table(rows)
    if st[1]:
        out.append(("Per-layer sensitivity", st))
    out.append(("Environment", (["what", "value"], _environment_rows(run))))
    return [sec for sec in out if sec[1][1]]


def run_model_data(config: dict[str, Any]) -> tuple[str, str]:
    """(model, data) a stored run's config names, whatever the kind wrote: strings, or ``{"name"}``/``{"spec"}``.

    Example:
        >>> run_model_data({"model": "lenet", "data": "digits"}), run_model_data({"model": {"name": "x"}})
        (('lenet', 'digits'), ('x', 'None'))
    """
    m, d = config.get("model"), config.get("data")
    model = m.get("name") if isinstance(m, dict) else m
    data = d.get("spec") if isinstance(d, dict) else d
    return str(model), str(data)


def write_report(store_path: str | Path, run_id: str, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (+ ``figures/*.png``) for ``run_id`` into ``out_dir``.

    Raises:
        QuantbenchError: no run matches ``run_id``; the run stored no rows and did not finish.

    Example:
        >>> write_report("runs/quantbench.db", "20240101-120000-eval", "out")  # doctest: +SKIP
        (PosixPath('out/report.html'), PosixPath('out/report.md'))
    """
    with ResultStore(store_path) as store:
        run = store.run(run_id)
        rows = store.query(run_id=run["run_id"])
    if not rows and run["status"] != "finished":
        raise QuantbenchError(f"run {run['run_id']}: {run['status']} before storing any result; nothing to report")
    return render_rows(run, rows, out_dir)


def write_devices_report(store_path: str | Path, model: str, out_dir: str | Path) -> tuple[Path, Path]:
    """One report comparing every device whose results were imported for ``model``."""
    with ResultStore(store_path) as store:
        runs = [r for r in store.runs(kind="device") if run_model_data(r["config"])[0] == model]
        if not runs:
            raise QuantbenchError(f"{store_path}: no device results imported for model {model!r}")
        rows = [row for r in runs for row in store.query(run_id=r["run_id"])]
    devices = sorted({str(r["config"].get("device")) for r in runs})
    title = f"{model} on {len(devices)} device(s): {', '.join(devices)}"
    machine = f"Measured on the device(s) {', '.join(devices)} by run_bundle.py, imported here."
    return render_rows(combined_run(runs, f"devices-{model}", title, "devices"), rows, out_dir, machine=machine)


def combined_run(runs: list[dict[str, Any]], run_id: str, name: str, kind: str) -> dict[str, Any]:
    """A run-like header for a report over several stored runs (their models and data listed)."""
    models = sorted({run_model_data(r["config"])[0] for r in runs})
    datas = sorted({run_model_data(r["config"])[1] for r in runs})
    return {"run_id": run_id, "name": name, "kind": kind, "status": "finished", "created": runs[-1]["created"],
            "environment": runs[-1]["environment"],
            "config": {"model": {"name": ", ".join(models)}, "data": {"spec": ", ".join(datas)}}}


def machine_sentence(run: dict[str, Any]) -> str:
    """Where a run's numbers were measured, for figure captions.

    Example:
        >>> machine_sentence({"environment": {"cpu_model": "EPYC", "logical_cores": 2, "torch_threads": 2}})
        'Measured on EPYC (2 logical cores, 2 torch threads).'
    """
    env = run.get("environment") or {}
    if not env.get("cpu_model"):
        return ""
    return (f"Measured on {env['cpu_model']} ({env.get('logical_cores', '?')} logical cores, "
            f"{env.get('torch_threads', '?')} torch threads).")


def render_rows(run: dict[str, Any], rows: list[dict[str, Any]], out_dir: str | Path, *,
                lead: Sequence[Section] = (), answer: Sequence[str] | None = None,
                machine: str | None = None) -> tuple[Path, Path]:
    """Render ``rows`` (of one run, or of many: a sweep) with ``run``'s title and environment.

    The report opens with ``answer`` (default: :func:`~quantbench.report.answer.answer_lines`),
    then ``lead`` tables (a sweep's pivot), the results, figures and the other tables.

    Example:
        >>> render_rows(run, rows, "out")  # doctest: +SKIP
        (PosixPath('out/report.html'), PosixPath('out/report.md'))
    """
    out = Path(out_dir)
    lines = list(answer) if answer is not None else answer_lines(run, rows)
    figures = make_figures(rows, machine_sentence(run) if machine is None else machine)
    for name in sorted({r["extra"].get("file") for r in rows if r["metric"] == "split.recover_psnr_db"} - {None}):
        png = out / str(name)
        if png.is_file():  # anonymization grids written by `quantbench split` into the run folder
            figures.append(Figure(png.stem, png.read_bytes(),
                                  "Per sample: the input image, four feature maps at the split, and the same maps "
                                  "after feature quantization (what the cloud receives)."))
    return write_page(run, out, lines, _sections(run, rows, lead), figures)


def write_page(run: dict[str, Any], out_dir: str | Path, answer: Sequence[str], sections: Sequence[Section],
               figures: Sequence[Figure]) -> tuple[Path, Path]:
    """Write one report page (HTML + Markdown + figure PNGs): the answer, tables, figures, definitions.

    Every user string is escaped. A folder this call created is removed again when writing
    fails, so a refused report leaves nothing behind.

    Example:
        >>> write_page({"run_id": "x", "kind": "eval", "config": {}}, "out", ["It works."], [], [])  # doctest: +SKIP
        (PosixPath('out/report.html'), PosixPath('out/report.md'))
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QuantbenchError(f"{out}: is a file; a report needs a folder")
    title = f"quantbench report — {run.get('name') or run['kind']} ({run['run_id']})"
    html_text = _render_html(title, run, answer, list(sections), list(figures))
    md_text = _render_md(title, run, answer, list(sections), list(figures))
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        if figures:
            fig_dir = out / "figures"
            fig_dir.mkdir(exist_ok=True)
            for f in figures:
                (fig_dir / f"{f.name}.png").write_bytes(f.png)
        html_path = out / "report.html"
        html_path.write_text(html_text, encoding="utf-8")
        md_path = out / "report.md"
        md_path.write_text(md_text, encoding="utf-8")
    except BaseException:
        if created:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    return html_path, md_path


_BEFORE_FIGURES = ("Measurement warning", "Results: FP32 vs quantized")


def _head_count(sections: list[Section]) -> int:
    """How many sections come before the figures: a sweep's pivot, any warning, the results table; else the
    first table (a split or device report's own), never the environment."""
    names = [name for name, _ in sections]
    idx = [i for i, n in enumerate(names) if n in _BEFORE_FIGURES or n.startswith("Sweep")]
    if idx:
        return max(idx) + 1
    return 1 if names and names[0] != "Environment" else 0


def _figure_note() -> str:
    return "" if matplotlib_available() else "Figures omitted: matplotlib is not installed (pip install quantbench[report])."


def _render_html(title: str, run: dict[str, Any], answer: Sequence[str], sections: list[Section],
                 figures: list[Figure]) -> str:
    model, data = run_model_data(run["config"])
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             "<section class='answer' id='answer'>" + "".join(f"<p>{html.escape(line)}</p>" for line in answer)
             + "</section>",
             f"<p>Model <code>{html.escape(model)}</code> on data <code>{html.escape(data)}</code>.</p>"]
    head = _head_count(sections)
    for name, table in sections[:head]:
        parts.append(f"<h2>{html.escape(name)}</h2>" + _html_table(*table))
    if figures or _figure_note():
        parts.append("<h2>Figures</h2>")
    if not figures and _figure_note():
        parts.append(f"<p>{html.escape(_figure_note())}</p>")
    for f in figures:
        b64 = base64.b64encode(f.png).decode("ascii")
        parts.append(f"<figure id='{html.escape(f.name)}'><img alt='{html.escape(f.name)}' "
                     f"src='data:image/png;base64,{b64}'><figcaption>{html.escape(f.caption)}</figcaption></figure>")
    for name, table in sections[head:]:
        parts.append(f"<h2>{html.escape(name)}</h2>" + _html_table(*table))
    parts.append("<h2>Definitions</h2><dl>" + "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in DEFINITIONS) + "</dl>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _render_md(title: str, run: dict[str, Any], answer: Sequence[str], sections: list[Section],
               figures: list[Figure]) -> str:
    lines = [f"# {_md_escape(title)}", ""]
    for line in answer:
        lines += [f"> {_md_escape(line)}", ">"]
    lines[-1] = ""
    head = _head_count(sections)
    for name, table in sections[:head]:
        lines += [f"## {_md_escape(name)}", "", _md_table(*table), ""]
    if figures or _figure_note():
        lines += ["## Figures", ""]
    if not figures and _figure_note():
        lines += [_figure_note(), ""]
    for f in figures:
        lines += [f"![{_md_escape(f.name)}](figures/{f.name}.png)", "", f"*{_md_escape(f.caption)}*", ""]
    for name, table in sections[head:]:
        lines += [f"## {_md_escape(name)}", "", _md_table(*table), ""]
    lines += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS] + [""]
    return "\n".join(lines)
