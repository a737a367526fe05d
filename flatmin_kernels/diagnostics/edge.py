"""Edges of stability: the largest Hessian eigenvalue a step size tolerates.

On a quadratic, GD with step η diverges along an eigenvector whose eigenvalue exceeds 2/η.
Full-step SAM, θ' = θ − η∇L(θ + ρg/‖g‖), multiplies the error along an eigenvector of
eigenvalue λ by 1 − ηλ − ηρλ²/‖g‖ (‖g‖ the whole current gradient norm, held fixed), so it
is stable while ηλ(1 + ρλ/‖g‖) ≤ 2. Solving for λ (Long & Bartlett 2024, spec section 5):

    SAM-edge(η, ρ, ‖g‖) = (‖g‖ / 2ρ) · (√(1 + 8ρ/(η‖g‖)) − 1)
                        = 4 / (η · (1 + √(1 + 8ρ/(η‖g‖))))

The second form is the same number without the cancellation of the first when ‖g‖ is
small; it tends to 2/η as ρ → 0 and to √(2‖g‖/(ηρ)) as ‖g‖ → 0. Both edges assume plain GD
steps: with momentum or Adam the base optimizer moves them (not derived here).
"""
from __future__ import annotations

import math


def _positive(name, value) -> float:
    value = float(value)
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def gd_edge(lr) -> float:
    """2/lr: the sharpness above which gradient descent with step ``lr`` is unstable."""
    return 2.0 / _positive("lr", lr)


def sam_edge(lr, rho, grad_norm) -> float:
    """The sharpness above which SAM with step ``lr`` and radius ``rho`` is unstable at gradient norm ``grad_norm``."""
    lr = _positive("lr", lr)
    rho = _positive("rho", rho)
    grad_norm = float(grad_norm)
    if not grad_norm >= 0 or math.isinf(grad_norm):
        raise ValueError(f"grad_norm must be a finite number >= 0, got {grad_norm!r}")
    if grad_norm == 0.0:
        return 0.0
    return 4.0 / (lr * (1.0 + math.sqrt(1.0 + 8.0 * rho / (lr * grad_norm))))
