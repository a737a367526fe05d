"""Sharpness diagnostics: Hessian eigenvalues and trace, edges of stability, a training monitor.

All of them see the model only through a zero-argument ``loss_fn`` returning the scalar loss
on a fixed batch, and the list of parameters (or ``model.named_parameters()``).
"""
from .edge import gd_edge, sam_edge
from .hessian import Hessian, TraceEstimate, hessian_eigenvalues, hessian_trace
from .monitor import SharpnessMonitor

__all__ = [
    "Hessian",
    "SharpnessMonitor",
    "TraceEstimate",
    "gd_edge",
    "hessian_eigenvalues",
    "hessian_trace",
    "sam_edge",
]
