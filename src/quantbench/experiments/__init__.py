"""Experiments: the runner and its records."""
