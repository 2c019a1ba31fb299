"""quantbench.train."""
