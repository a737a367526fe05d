"""Optimizers: GC-capable SGD/Adam/AdamW, and the flat-minima wrappers built on them."""
from .adam import Adam, AdamW
from .batchnorm import disable_running_stats, enable_running_stats, running_stats_disabled
from .gam import GAM
from .gc import centralize_gradient
from .nso import NSO
from .sam import SAM
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "centralize_gradient", "SAM", "GAM", "NSO",
           "disable_running_stats", "enable_running_stats", "running_stats_disabled"]
