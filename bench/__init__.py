"""Benchmark scripts: they measure Parley and print numbers, and they assert nothing."""
