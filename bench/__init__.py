"""Benchmarks: each starts its own servers, measures ratios or counts in one run, and updates BENCHMARKS.md."""
