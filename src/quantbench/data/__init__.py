"""quantbench.data."""
