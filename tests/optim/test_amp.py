"""fp16 recipes with torch.amp.GradScaler for SAM, GAM and NSO (README: 'Mixed precision with GradScaler').

GradScaler runs on the CPU here; the scale is a power of two, so a run without overflow equals
the unscaled run to rounding. An overflow is injected into one chosen backward pass: the step
must be skipped with the weights back at w (never w + e, never inf), the optimizer state
untouched, the scale reduced, and the next step must work.
"""
import pytest
import torch

import flatmin_kernels as fk

from ..backends_under_test import CPU_BACKENDS as BACKENDS
from . import models as M

WRAPPERS = {
    "sam": lambda net, backend: fk.SAM(net.parameters(), fk.AdamW, rho=0.05, lr=1e-2, model=net, backend=backend),
    "gam": lambda net, backend: fk.GAM(net.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, model=net,
                                       backend=backend),
    "nso": lambda net, backend: fk.NSO(net.parameters(), fk.AdamW, sigma=0.01, lr=1e-2, seed=1, model=net,
                                       backend=backend),
    # a base only the generic path runs: unscale and skip outside the fused update
    "sam-generic": lambda net, backend: fk.SAM(net.parameters(), M.PlainSGD, rho=0.05, lr=0.05, momentum=0.9,
                                               model=net, backend=backend),
    "gam-generic": lambda net, backend: fk.GAM(net.parameters(), M.PlainSGD, lr=0.05, momentum=0.9, model=net,
                                               backend=backend),
}
PASSES = {"sam": 2, "gam": 4, "nso": 2, "sam-generic": 2, "gam-generic": 4}
INIT_SCALE = 2.0**12


def scaled_closure(net, opt, scaler, batch, poison_pass=None):
    """A torch-style closure under the scaler; pass number ``poison_pass`` (1-based) overflows."""
    calls = [0]

    def closure():
        calls[0] += 1
        opt.zero_grad()
        loss = M.loss_of(net, batch)
        if calls[0] == poison_pass:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        return loss

    return closure


def snapshot(net, opt):
    params = [p.detach().clone() for p in net.parameters()]
    state = [t.clone() for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]
    return params, state


def assert_same(snap, net, opt):
    params, state = snap
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), params))
    assert all(torch.equal(a, b) for a, b in zip([t for st in opt.state.values() for t in st.values()
                                                  if torch.is_tensor(t)], state))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(WRAPPERS))
def test_closure_recipe_matches_the_unscaled_run(kind, backend):
    net, ref = M.make_net(), M.make_net()
    opt, ref_opt = WRAPPERS[kind](net, backend), WRAPPERS[kind](ref, backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    opt.grad_scaler = scaler
    for batch in M.batches(3):
        scaler.step(opt, scaled_closure(net, opt, scaler, batch))
        scaler.update()
        ref_opt.step(M.closure_for(ref, batch, ref_opt.zero_grad))
    assert scaler.get_scale() == INIT_SCALE
    M.assert_same_model(net, ref, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,poison_pass", [(k, i) for k, n in PASSES.items() for i in range(1, n + 1)])
def test_an_overflow_in_any_pass_skips_the_step_at_w_and_backs_off(kind, poison_pass, backend):
    net = M.make_net()
    opt = WRAPPERS[kind](net, backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, backoff_factor=0.5)
    opt.grad_scaler = scaler
    batch, later = M.batches(2)
    scaler.step(opt, scaled_closure(net, opt, scaler, later))  # a clean step: state exists
    scaler.update()
    before = snapshot(net, opt)
    scaler.step(opt, scaled_closure(net, opt, scaler, batch, poison_pass))
    scaler.update()
    assert_same(before, net, opt)
    assert scaler.get_scale() == INIT_SCALE / 2
    scaler.step(opt, scaled_closure(net, opt, scaler, batch))  # and the next step works
    scaler.update()
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(net.parameters(), before[0]))


@pytest.mark.parametrize("poison", [None, 1, 2])
def test_sam_two_call_recipe(poison):
    net, ref = M.make_net(), M.make_net()
    opt = WRAPPERS["sam"](net, "torch")
    ref_opt = WRAPPERS["sam"](ref, "torch")
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    opt.grad_scaler = scaler
    batch = M.batches(1)[0]
    before = snapshot(net, opt)
    closure = scaled_closure(net, opt, scaler, batch, poison)
    closure()
    opt.first_step(zero_grad=True)
    closure()
    scaler.step(opt)
    scaler.update()
    if poison:
        assert_same(before, net, opt)
        assert scaler.get_scale() == INIT_SCALE / 2
    else:
        ref_opt.step(M.closure_for(ref, batch, ref_opt.zero_grad))
        M.assert_same_model(net, ref, rtol=1e-6)


def test_a_scaler_the_wrapper_does_not_know_is_refused_with_the_recipe():
    net = M.make_net()
    opt = WRAPPERS["sam"](net, "torch")
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    scaler.scale(torch.zeros(()))  # a scaler already in use (on its very first step GradScaler asserts itself)
    batch = M.batches(1)[0]
    before = snapshot(net, opt)
    closure = scaled_closure(net, opt, scaler, batch)
    with pytest.raises(RuntimeError, match="stepped by a GradScaler it does not know: set opt.grad_scaler = scaler"):
        scaler.step(opt, closure)
    assert_same(before, net, opt)
    # the two-call style: the second step puts w back before raising
    closure()
    opt.first_step(zero_grad=True)
    closure()
    with pytest.raises(RuntimeError, match="The weights were put back to w; no update was made"):
        scaler.step(opt)
    assert_same(before, net, opt)


def test_unscaling_before_the_first_step_is_refused():
    net = M.make_net()
    opt = WRAPPERS["sam"](net, "torch")
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    opt.grad_scaler = scaler
    closure = scaled_closure(net, opt, scaler, M.batches(1)[0])
    closure()
    scaler.unscale_(opt)
    before = snapshot(net, opt)
    with pytest.raises(RuntimeError, match=r"scaler.unscale_\(opt\) was called before the first step"):
        opt.first_step(zero_grad=True)
    assert_same(before, net, opt)
