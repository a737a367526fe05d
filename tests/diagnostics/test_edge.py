"""gd_edge and sam_edge: the spec's worked values, limits, and the stability claim on a quadratic."""
import math

import pytest
import torch

from flatmin_kernels.diagnostics import gd_edge, sam_edge


@pytest.mark.parametrize("lr, rho, grad_norm, expected", [
    (0.01, 0.1, 1.0, 40.0),
    (0.01, 0.1, 0.1, 13.7),
    (0.01, 0.1, 0.01, 4.4),
    (0.1, 0.05, 1.0, 12.4),
])
def test_spec_worked_values(lr, rho, grad_norm, expected):
    # The spec rounds to 3 significant digits (4.4 to 2).
    assert float(f"{sam_edge(lr, rho, grad_norm):.3g}") == pytest.approx(expected, abs=0.051)


def test_matches_the_papers_form_and_limits():
    for lr, rho, g in [(0.01, 0.1, 1.0), (0.3, 0.02, 5.0), (1e-3, 0.5, 1e-4)]:
        paper = g / (2 * rho) * (math.sqrt(1 + 8 * rho / (lr * g)) - 1)
        assert sam_edge(lr, rho, g) == pytest.approx(paper, rel=1e-9)
        assert sam_edge(lr, rho, g) < gd_edge(lr)
    assert gd_edge(0.01) == 200.0
    assert sam_edge(0.01, 1e-9, 1.0) == pytest.approx(200.0, rel=1e-6)  # rho -> 0
    g = 1e-12  # grad_norm -> 0: √(2‖g‖/(ηρ)), no cancellation
    assert sam_edge(0.01, 0.1, g) == pytest.approx(math.sqrt(2 * g / (0.01 * 0.1)), rel=1e-4)
    assert sam_edge(0.01, 0.1, 0.0) == 0.0


@pytest.mark.parametrize("factor, stable", [(0.97, True), (1.03, False)])
def test_sam_on_a_quadratic_is_stable_exactly_below_the_edge(factor, stable):
    """Along the top eigenvector, full-step SAM grows iff λ exceeds the edge at the current ‖g‖."""
    lr, rho, lam = 0.1, 0.05, 10.0
    # ‖g‖ at which lam is the edge: solve ηλ(1 + ρλ/‖g‖) = 2 for ‖g‖.
    g_edge = rho * lam / (2 / (lr * lam) - 1)
    assert sam_edge(lr, rho, g_edge) == pytest.approx(lam, rel=1e-9)
    theta = torch.tensor([g_edge / lam / factor], dtype=torch.float64)  # ‖g‖ = λθ
    grad = lam * theta
    perturbed = theta + rho * grad / grad.abs()
    new_theta = theta - lr * lam * perturbed
    assert (new_theta.abs() < theta.abs()).item() is stable


def test_bad_input():
    with pytest.raises(ValueError, match=r"lr must be a positive finite number, got 0.0"):
        gd_edge(0)
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        sam_edge(-0.1, 0.05, 1.0)
    with pytest.raises(ValueError, match=r"rho must be a positive finite number, got 0.0"):
        sam_edge(0.1, 0.0, 1.0)
    with pytest.raises(ValueError, match="rho must be a positive finite number"):
        sam_edge(0.1, float("nan"), 1.0)
    with pytest.raises(ValueError, match="grad_norm must be a finite number >= 0"):
        sam_edge(0.1, 0.05, -1.0)
