"""SQLite results store."""

from quantbench.store.sqlite import Result, ResultStore, export_rows, new_run_id

__all__ = ["Result", "ResultStore", "export_rows", "new_run_id"]
