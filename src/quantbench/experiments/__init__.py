"""quantbench.experiments."""
