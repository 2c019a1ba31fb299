"""quantbench.report."""
