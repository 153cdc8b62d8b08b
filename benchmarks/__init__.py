"""Benchmarks of the pipeline: `python -m benchmarks.train_speed` and `python -m benchmarks.sweep` (see README.md)."""
