"""Benchmarks (not tests): each prints a table with its baseline measured in the same run
and appends a dated section to bench/RESULTS.md. Run with ``python -m bench [NAME ...]``."""
