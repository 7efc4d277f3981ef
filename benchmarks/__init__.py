"""Benchmarks that print measured figures: run each from the repository root as `python -m benchmarks.NAME`."""
