"""SharpnessMonitor: when it measures, what a record holds, and its bad input."""
import pytest
import torch

from flatmin_kernels.diagnostics import Hessian, SharpnessMonitor, gd_edge, sam_edge


def setup():
    """A quadratic ½ Σ d_i θ_i² with d = (6, 2, 1): λ_max = 6, trace = 9, gradient d⊙θ."""
    d = torch.tensor([6.0, 2.0, 1.0], dtype=torch.float64)
    theta = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    return d, theta, (lambda: 0.5 * (d * theta ** 2).sum())


def test_records_every_n_steps_with_edges_from_the_same_batch():
    d, theta, loss_fn = setup()
    opt = torch.optim.SGD([theta], lr=0.1)
    monitor = SharpnessMonitor(loss_fn, [theta], lr=opt, rho=0.05, every=3)
    due = []
    for _ in range(7):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        if _ == 4:
            opt.param_groups[0]["lr"] = 0.05  # a scheduler's change is followed
        due.append(monitor.step() is not None)
        if due[-1]:
            at_record = theta.detach().clone()
    assert due == [False, False, True, False, False, True, False]
    assert [r["step"] for r in monitor.records] == [3, 6]
    rec = monitor.records[-1]
    grad_norm = float((d * at_record).norm())
    assert rec["lambda_max"] == pytest.approx(6.0, rel=1e-3)
    assert rec["trace"] == pytest.approx(9.0, rel=1e-9)  # exact for a diagonal Hessian
    assert rec["grad_norm"] == pytest.approx(grad_norm, rel=1e-9)
    assert rec["loss"] == pytest.approx(float(0.5 * (d * at_record ** 2).sum()), rel=1e-9)
    assert rec["lr"] == 0.05 and rec["gd_edge"] == gd_edge(0.05) == 40.0
    assert rec["sam_edge"] == pytest.approx(sam_edge(0.05, 0.05, grad_norm), rel=1e-12)


def test_matches_the_standalone_functions_and_is_reproducible():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x, y = torch.randn(32, 5), torch.randint(0, 2, (32,))
    loss_fn = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
    records = []
    for _ in range(2):
        monitor = SharpnessMonitor(loss_fn, model.named_parameters(), lr=0.1, seed=3)
        records.append(monitor.record())
    assert records[0] == records[1]
    # The same measurements as Hessian's, drawing from one generator seeded alike.
    g = torch.Generator().manual_seed(3)
    hessian = Hessian(loss_fn, model.parameters())
    (lam,), _ = hessian.eigenvalues(1, generator=g)
    assert records[0]["lambda_max"] == lam
    assert records[0]["trace"] == hessian.trace(generator=g).trace
    assert records[0]["grad_norm"] == hessian.grad_norm and records[0]["loss"] == hessian.loss
    assert records[0]["sam_edge"] is None  # no rho given


def test_warm_start_saves_products():
    _, theta, loss_fn = setup()
    monitor = SharpnessMonitor(loss_fn, [theta], lr=0.1, trace=False)
    monitor.record()
    assert monitor.records[0]["trace"] is None
    assert monitor._eigenvector is not None
    from flatmin_kernels.diagnostics import hessian as hmod
    calls = []
    real = hmod.Hessian.hvp
    hmod.Hessian.hvp = lambda self, v: calls.append(1) or real(self, v)
    try:
        monitor.record()
    finally:
        hmod.Hessian.hvp = real
    assert len(calls) <= 3


def test_bad_input():
    _, theta, loss_fn = setup()
    with pytest.raises(ValueError, match="lr must be a positive finite number, got 0.0"):
        SharpnessMonitor(loss_fn, [theta], lr=0.0)
    with pytest.raises(ValueError, match="rho must be a positive finite number, got -0.1"):
        SharpnessMonitor(loss_fn, [theta], lr=0.1, rho=-0.1)
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        SharpnessMonitor(loss_fn, [theta], lr=0.1, every=0)
    with pytest.raises(ValueError, match="must require grad"):
        SharpnessMonitor(loss_fn, [theta.detach()], lr=0.1)
