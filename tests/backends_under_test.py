"""Which backends the CPU-tensor tests run on.

Every available backend that can run on CPU tensors: the torch reference, the compiled cpp
backend, and Triton when its interpreter is on (conftest turns it on without CUDA). On a GPU
machine Triton runs compiled and only on CUDA tensors, so it is checked there by the op
conformance tests' CUDA cases (marked ``gpu``).
"""
import torch

import flatmin_kernels
from flatmin_kernels.backends import get_backend

CPU_BACKENDS = [name for name in flatmin_kernels.available_backends()
                if get_backend(name).supports(torch.device("cpu"))]

# The Triton interpreter runs each kernel program in Python: such backends run shortened
# trajectories (their ops are proven op by op in tests/backends).
INTERPRETED = [name for name in CPU_BACKENDS if name == "triton"]
