import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded like the CLI runs: faster on a shared 2-core machine, and bit-reproducible."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
