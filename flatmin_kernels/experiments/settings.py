"""Process-wide torch settings for a reproducible run, put back afterwards."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def single_process_settings(threads: int):
    """``threads`` CPU threads and deterministic algorithms for the duration of a run.

    A fixed thread count fixes the order of the CPU reductions, which is what makes the same
    command print the same numbers on the same machine.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
