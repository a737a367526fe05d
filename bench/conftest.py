"""pytest-benchmark runs of the op and step microbenchmarks (``python -m pytest bench --benchmark-only``).

Not part of the normal test run (pyproject's ``testpaths`` is ``tests``). The lists are small
enough for a few minutes on a CPU; ``--benchmark-json`` is the machine-readable record.
"""
import torch

from flatmin_kernels.bench import machine
from flatmin_kernels.bench.timing import WallClock

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = [name for name, why in machine.native_backends(DEVICE).items() if why is None]
# its timer() leaves the stand-in backward passes out of pytest-benchmark's rounds
CLOCK = WallClock()


def synced(fn):
    """fn, followed by a device synchronisation on CUDA (pytest-benchmark times the host)."""
    if DEVICE.type != "cuda":
        return fn
    return lambda: (fn(), torch.cuda.synchronize())
