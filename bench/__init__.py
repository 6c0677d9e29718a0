"""Benchmarks: `make bench` (bench/run.py) runs every bench/*_bench.py and prints figures."""
