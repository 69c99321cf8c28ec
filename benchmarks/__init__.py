"""Benchmarks: `steel bench ...` measures side by side in one run and writes JSON plus a table."""
