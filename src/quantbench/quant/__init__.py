"""quantbench.quant."""
