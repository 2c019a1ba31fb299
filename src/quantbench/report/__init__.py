"""Reports: tables and figures from the store, as self-contained HTML and Markdown."""

from quantbench.report.compare import compare_runs, write_compare_report
from quantbench.report.render import render_rows, write_devices_report, write_report
from quantbench.report.sweep import write_sweep_report

__all__ = ["compare_runs", "render_rows", "write_compare_report", "write_devices_report", "write_report",
           "write_sweep_report"]
