"""Training: one loop for FP32 and QAT."""

from quantbench.train.loop import History, fit

__all__ = ["History", "fit"]
