"""pytest-benchmark runs of the op and step microbenchmarks (``python -m pytest bench --benchmark-only``).

Not part of the normal test run (pyproject's ``testpaths`` is ``tests``). The lists are small
enough for a few minutes on a CPU; ``--benchmark-json`` is the machine-readable record.
"""
import pytest
import torch

from flatmin_kernels.bench.timing import WallClock


# its timer() leaves the stand-in backward passes out of pytest-benchmark's rounds
CLOCK = WallClock()


@pytest.fixture(autouse=True)
def _threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)
