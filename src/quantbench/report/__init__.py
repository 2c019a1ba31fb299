"""Reports: tables and figures from the store, as self-contained HTML and Markdown."""

from quantbench.report.render import write_report

__all__ = ["write_report"]
