"""Benchmark cases for ``scripts/benchmark.py``: one module per area, each exposing ``run(args) -> list[dict]``."""
