"""quantbench.split."""
