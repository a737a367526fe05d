"""Adapters that run other libraries' optimizers on flatmin's fused ops (through ``flatmin_kernels.functional``)."""
