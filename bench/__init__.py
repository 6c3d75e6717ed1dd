"""Benchmarks: `python -m bench --help`; bench/README.md maps this folder."""
