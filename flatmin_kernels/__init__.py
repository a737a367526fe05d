"""flatmin_kernels: fused multi-tensor kernels for flat-minima optimizers.

Change one import to get Gradient Centralization inside SGD/Adam/AdamW, and (as they land)
SAM/ASAM, GAM and NSO, with every per-layer step done by one fused op per bucket of tensors.
"""
from .backends import available_backends, backend_status
from .optim import SGD, Adam, AdamW, centralize_gradient
from .optim import GAM, NSO, SAM, disable_running_stats, enable_running_stats, running_stats_disabled
from . import diagnostics

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "available_backends",
    "backend_status",
    "centralize_gradient",
    "SAM",
    "GAM",
    "NSO",
    "disable_running_stats",
    "enable_running_stats",
    "running_stats_disabled",
    "diagnostics",
    "__version__",
]
