"""quantbench.engines."""
