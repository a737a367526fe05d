"""Benchmarks of flatmin_kernels: the peers (``bench.peers``), pytest-benchmark files and the GPU check.

The engine is ``flatmin_kernels.bench`` (``python -m flatmin_kernels bench``); see README.md here.
"""
