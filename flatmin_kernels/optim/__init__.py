"""Optimizers: GC-capable SGD/Adam/AdamW, and the flat-minima wrappers built on them."""
from .adam import Adam, AdamW
from .gc import centralize_gradient
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "centralize_gradient"]
