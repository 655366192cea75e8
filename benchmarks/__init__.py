"""Benchmark scripts (run as ``python benchmarks/<name>.py``; importable as ``benchmarks.<name>``
for the GPU kit, benchmarks/gpu/bench.py)."""
