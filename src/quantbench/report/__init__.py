"""Reports: tables and figures from the store, as self-contained HTML and Markdown."""

from quantbench.report.render import render_rows, write_devices_report, write_report, write_sweep_report

__all__ = ["render_rows", "write_devices_report", "write_report", "write_sweep_report"]
