"""Benchmarks, not tests: `python -m benchmarks.train_speed` and `python -m benchmarks.sweep`.

See docs/performance.md."""
