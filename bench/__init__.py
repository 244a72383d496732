"""Benchmarks: loopline beside named peers; ``python -m bench`` writes docs/benchmarks.md."""
