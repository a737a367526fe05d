"""Gradient Centralization (Yong et al., 2020): which tensors it applies to, and GC on its own.

GC replaces a weight gradient G (dim 0 = output unit) by G minus its mean over all other
dimensions. ``"gc"`` applies it to every tensor with more than one dimension, ``"gcc"`` only
to conv weights (more than three). Biases and norm parameters are never changed.
"""
from __future__ import annotations

import torch

from ..backends import torch_backend

CENTRALIZE_CHOICES = (None, "gc", "gcc")
_MIN_NDIM = {"gc": 2, "gcc": 4}


def check_centralize(value) -> None:
    if value not in CENTRALIZE_CHOICES:
        raise ValueError(
            f"unknown centralize value {value!r}; choose None, 'gc' (every tensor with ndim > 1) "
            f"or 'gcc' (conv weights only, ndim > 3)"
        )


def applies(mode, tensor: torch.Tensor) -> bool:
    """Whether GC mode ``mode`` centralizes a gradient shaped like ``tensor``."""
    return mode is not None and tensor.dim() >= _MIN_NDIM[mode]


def centralize_gradient(grad: torch.Tensor, conv_only: bool = False) -> torch.Tensor:
    """Centralize ``grad`` in place (mean over all dims but 0 subtracted) and return it.

    Tensors with one dimension (or up to three with ``conv_only=True``) are returned unchanged.
    """
    if grad.is_sparse or grad.is_complex():
        raise TypeError("centralize_gradient needs a dense real tensor")
    if applies("gcc" if conv_only else "gc", grad):
        torch_backend.centralize_(torch_backend.Table([grad], gc_rows=[True]), "param")
    return grad
