"""What counts as the first pass in ``step(closure)`` (README: 'Gradient accumulation').

Rule: the gradients present are the first pass only if a backward pass reached the parameters
since the optimizer last zeroed or cleared them (``opt.zero_grad`` with either setting, or a
step), or if they appeared where it had left None (FSDP2 sets sharded gradients itself);
otherwise the closure runs first. So zero-filled gradients (``opt.zero_grad(set_to_none=False)``)
never turn SAM into plain SGD, and micro-batches accumulated before the call are the first pass
of the whole accumulated batch.
"""
import pytest
import torch

import flatmin_kernels as fk

from .. import oracles
from . import models as M


def sam(net):
    return fk.SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, backend="torch")


def counting(closure):
    calls = [0]

    def wrapped():
        calls[0] += 1
        return closure()

    return wrapped, calls


def test_zero_filled_gradients_are_not_a_first_pass():
    net, ref = M.make_net(), M.make_net()
    opt, ref_opt = sam(net), sam(ref)
    batch = M.batches(1)[0]
    M.loss_of(net, batch).backward()
    opt.step(M.closure_for(net, batch, opt.zero_grad))  # an ordinary step: grads are None after it
    ref_opt.step(M.closure_for(ref, batch, ref_opt.zero_grad))
    M.loss_of(net, batch).backward()
    M.loss_of(ref, batch).backward()  # the same forward (BatchNorm statistics move alike)
    ref_opt.zero_grad()
    opt.zero_grad(set_to_none=False)  # zeros, and no backward since
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())
    closure, calls = counting(M.closure_for(net, batch, opt.zero_grad))
    opt.step(closure)
    ref_opt.step(M.closure_for(ref, batch, ref_opt.zero_grad))
    assert calls[0] == 2, "the closure ran first: the zeros were not taken as the gradient at w"
    M.assert_same_model(net, ref)


def test_gradients_set_where_the_optimizer_left_none_are_the_first_pass():
    """What FSDP2 does: its backward assigns the sharded gradients, unseen by autograd hooks."""
    net = M.make_net()
    opt = sam(net)
    batch = M.batches(1)[0]
    opt.step(M.closure_for(net, batch, opt.zero_grad))
    probe = M.make_net()
    probe.load_state_dict(net.state_dict())
    M.loss_of(probe, batch).backward()
    for p, q in zip(net.parameters(), probe.parameters()):
        p.grad = None if q.grad is None else q.grad.clone()
    closure, calls = counting(M.closure_for(net, batch, opt.zero_grad))
    opt.step(closure)
    assert calls[0] == 1


def test_gradients_of_a_backward_are_the_first_pass():
    net = M.make_net()
    opt = sam(net)
    batch = M.batches(1)[0]
    M.loss_of(net, batch).backward()
    closure, calls = counting(M.closure_for(net, batch, opt.zero_grad))
    opt.step(closure)
    assert calls[0] == 1  # davda54's protocol: only the perturbed pass


@pytest.mark.parametrize("kind", ["sam", "gam"])
def test_accumulated_micro_batches_are_the_first_pass_of_the_whole_batch(kind):
    """Accumulate two micro-batches, then step with a closure over both: exactly the method on the
    concatenated batch (the loss being the sum of the micro-batch losses)."""
    net, ref = M.make_net(), M.make_net()
    make = {"sam": lambda n: fk.SAM(n.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, model=n, backend="torch"),
            "gam": lambda n: fk.GAM(n.parameters(), torch.optim.SGD, lr=0.1, model=n, backend="torch")}[kind]
    opt = make(net)
    micro = M.batches(2, seed=5)

    def micro_closure():
        opt.zero_grad()
        total = sum(M.loss_of(net, b) for b in micro)
        for b in micro:  # as a trainer does: one backward per micro-batch
            M.loss_of(net, b).backward()
        return total

    for b in micro:
        M.loss_of(net, b).backward()
    opt.step(micro_closure)

    base = oracles.OracleSGD([dict(params=list(ref.parameters()), lr=0.1, momentum=0.0, dampening=0.0,
                                   weight_decay=0.0, nesterov=False, maximize=False, centralize=None)])
    oracle = (oracles.OracleSAM(base.groups, base, rho=0.05, model=ref) if kind == "sam"
              else oracles.OracleGAM(base.groups, base, model=ref))
    oracle.step(lambda: _summed(ref, micro))
    M.assert_same_model(net, ref)


def _summed(net, micro):
    for p in net.parameters():
        p.grad = None
    total = sum(M.loss_of(net, b) for b in micro)
    total.backward()
    return total


def test_gam_counts_three_closure_calls_after_a_backward_and_four_without():
    net = M.make_net()
    opt = fk.GAM(net.parameters(), torch.optim.SGD, lr=0.1, backend="torch")
    batch = M.batches(1)[0]
    closure, calls = counting(M.closure_for(net, batch, opt.zero_grad))
    opt.step(closure)
    assert calls[0] == 4
    M.loss_of(net, batch).backward()
    opt.step(closure)
    assert calls[0] == 4 + 3
