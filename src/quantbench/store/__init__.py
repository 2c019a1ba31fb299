"""quantbench.store."""
