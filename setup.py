"""Build script.

Metadata lives in pyproject.toml; this file exists for the compiled extension
``flatmin_kernels._C`` (csrc/), which is added here once it has sources.
"""
from setuptools import setup

setup()
