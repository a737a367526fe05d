"""GAM (both forms) against the naive oracle; passes, buffers, resume and errors."""

import pytest
import torch

import flatmin_kernels as fk
from tests import oracles

from . import models as M

HYPER = dict(grad_rho=0.05, grad_norm_rho=0.2, grad_beta_0=0.5, grad_beta_1=0.6, grad_gamma=0.3)


def make(model, base, backend, **kw):
    cls, base_kw = M.base_kwargs(base)
    return fk.GAM(M.flatmin_groups(model, base), cls, backend=backend, model=model, **kw, **base_kw)


def make_oracle(model, base, **kw):
    groups = M.oracle_groups(model, base)
    return oracles.OracleGAM(groups, M.oracle_base(base, groups), model=model, **kw)


TRAJECTORIES = [(base, form, adaptive) for base in ("sgd", "adamw") for form in ("paper", "reference")
                for adaptive in (False,)] + [("sgd", "paper", True)]


@pytest.mark.parametrize("backend,base,form,adaptive", M.backend_cases(
    TRAJECTORIES, [("adamw", "reference", True)]))
def test_trajectory_matches_oracle(backend, base, form, adaptive):
    net = M.make_net()
    ref = M.twin(net)
    hyper = dict(HYPER, grad_rho=0.5, grad_norm_rho=1.0) if adaptive else HYPER
    opt = make(net, base, backend, form=form, adaptive=adaptive, **hyper)
    oracle = make_oracle(ref, base, form=form, adaptive=adaptive, **hyper)
    calls = []
    for batch in M.batches(M.steps(backend)):
        expected = oracle.step(M.oracle_closure(ref, batch))
        loss = opt.step(M.closure_for(net, batch, opt.zero_grad, calls))
        torch.testing.assert_close(loss, expected, rtol=M.RTOL, atol=0)
    M.assert_same_model(net, ref, rtol=M.RTOL)
    assert len(calls) == 4 * M.steps(backend)  # four gradients per step
    assert torch.equal(net.unused, ref.unused)


def test_forms_differ():
    """The two forms are different algorithms whenever beta != 1 (not a no-op flag)."""
    nets = {}
    for form in ("paper", "reference"):
        nets[form] = M.make_net()
        opt = make(nets[form], "sgd", "torch", form=form, **HYPER)
        for batch in M.batches(3):
            opt.step(M.closure_for(nets[form], batch, opt.zero_grad))
    assert not torch.allclose(nets["paper"].fc1.weight, nets["reference"].fc1.weight, rtol=1e-4, atol=0)


def test_three_extra_buffers():
    net = M.make_net()
    opt = make(net, "adamw", "torch", **HYPER)
    opt.step(M.closure_for(net, M.batches(1)[0], opt.zero_grad))
    assert M.extra_buffer_numel(opt, net) == 3 * M.numel_with_grad(net)  # W, A, B (official code: 6)


@pytest.mark.parametrize("backend", M.FUSED + ["torch"])
def test_zero_gradient_gives_no_nan(backend):
    w = torch.nn.Parameter(torch.ones(3))
    opt = fk.GAM([w], torch.optim.SGD, lr=0.1, backend=backend)

    def closure():
        opt.zero_grad()
        loss = (w * 0).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.equal(w, torch.ones(3))


@pytest.mark.parametrize("backend", M.FUSED + ["torch"])
@pytest.mark.parametrize("bad_pass", [0, 1, 2, 3])
def test_non_finite_gradient_skips_everything(backend, bad_pass):
    """NaN in any of the four passes: the weights come back unchanged and nothing is updated."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, -1.0]))
    opt = fk.GAM([w], torch.optim.SGD, lr=0.1, momentum=0.9, backend=backend)
    seen = []

    def closure():
        opt.zero_grad()
        seen.append(w.detach().clone())
        loss = (w ** 2).sum() * (float("nan") if len(seen) - 1 == bad_pass else 1.0)
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.equal(w, torch.tensor([1.0, 2.0, -1.0]))
    assert opt.state[w].get("momentum_buffer") is None or torch.isfinite(opt.state[w]["momentum_buffer"]).all()
    for later in seen[bad_pass + 1:]:  # no perturbation after the bad pass
        assert torch.equal(later, seen[bad_pass])


def test_resume_bit_identical():
    M.resume_run(lambda net: make(net, "sgd", "torch", **HYPER))


def test_bad_input():
    params = M.make_net().parameters
    for name in ("grad_rho", "grad_norm_rho"):
        with pytest.raises(ValueError, match=f"{name} must be non-negative, got -0.5"):
            fk.GAM(params(), torch.optim.SGD, lr=0.1, **{name: -0.5})
    with pytest.raises(ValueError, match="grad_gamma must be non-negative"):
        fk.GAM(params(), torch.optim.SGD, lr=0.1, grad_gamma=-1.0)
    with pytest.raises(ValueError, match=r"grad_beta_0 must be in \[0, 1\], got 1.5"):
        fk.GAM(params(), torch.optim.SGD, lr=0.1, grad_beta_0=1.5)
    with pytest.raises(ValueError, match="unknown form 'official'"):
        fk.GAM(params(), torch.optim.SGD, lr=0.1, form="official")
    opt = fk.GAM(params(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="GAM requires a closure"):
        opt.step()


@pytest.mark.parametrize("backend", ["torch", "cpp"] if "cpp" in fk.available_backends() else ["torch"])
def test_a_generic_base_optimizer_takes_the_same_steps_as_the_fused_one(backend):
    """GAM's direction reaches an arbitrary base optimizer through p.grad (its coefficient a
    per-bucket device scalar): PlainSGD must then step exactly as the fused SGD does."""
    net, ref = M.make_net(), M.make_net()
    opt = fk.GAM(net.parameters(), M.PlainSGD, lr=0.05, momentum=0.9, backend=backend)
    ref_opt = fk.GAM(ref.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, backend=backend)
    assert not opt.fused and ref_opt.fused
    for batch in M.batches(4):
        opt.step(M.closure_for(net, batch, opt.zero_grad))
        ref_opt.step(M.closure_for(ref, batch, ref_opt.zero_grad))
    M.assert_same_model(net, ref, rtol=1e-5)
