"""quantbench.measure."""
