"""An optimizer that goes out of scope is freed, with its plans, buffers and parameters.

The wrappers watch backward passes with an autograd hook that lives in the parameters' C++
metadata, while their plans hold the parameters in C++ tables (cpp, triton): a hook holding the
optimizer would close a cycle Python's collector cannot see, and every SAM/GAM/NSO (and its
model) would live forever -- a leak in any sweep or evaluation loop that builds optimizers.
"""
import gc
import weakref

import pytest
import torch

import flatmin_kernels as fk

from ..backends_under_test import CPU_BACKENDS
from . import models as M

WRAPPERS = {
    "SAM": lambda ps, be: fk.SAM(ps, torch.optim.SGD, rho=0.05, lr=0.1, backend=be),
    "GAM": lambda ps, be: fk.GAM(ps, fk.AdamW, lr=1e-3, backend=be),
    "NSO": lambda ps, be: fk.NSO(ps, fk.AdamW, sigma=0.01, seed=0, lr=1e-3, backend=be),
    "AdamW": lambda ps, be: fk.AdamW(ps, lr=1e-3, centralize="gc", backend=be),
}


def trained(name, backend):
    net = M.make_net()
    opt = WRAPPERS[name](net.parameters(), backend)
    for batch in M.batches(2):
        M.loss_of(net, batch).backward()  # the autograd hook fires: the first pass
        opt.step(M.closure_for(net, batch, opt.zero_grad))
    return net, opt


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(WRAPPERS))
def test_an_optimizer_out_of_scope_is_freed_with_its_model(name, backend):
    net, opt = trained(name, backend)
    refs = [weakref.ref(opt), weakref.ref(net)] + [weakref.ref(p) for p in net.parameters()]
    del net, opt
    gc.collect()
    assert [r() is None for r in refs] == [True] * len(refs)


@pytest.mark.parametrize("name", ["SAM", "NSO"])
def test_the_backward_hook_goes_with_its_optimizer(name):
    """A model outlives its first optimizer: the next one sees the first pass, the dead one's hook
    is removed (nothing of it runs at a backward)."""
    net = M.make_net()
    first = WRAPPERS[name](net.parameters(), "torch")
    batch = M.batches(1)[0]
    M.loss_of(net, batch).backward()
    first.step(M.closure_for(net, batch, first.zero_grad))
    remove_hook = first._step_state.hook
    del first
    gc.collect()
    assert remove_hook is not None and not remove_hook.alive  # it ran: the hook is removed
    second = WRAPPERS[name](net.parameters(), "torch")
    calls = [0]
    closure = M.closure_for(net, batch, second.zero_grad)

    def counted():
        calls[0] += 1
        return closure()

    M.loss_of(net, batch).backward()
    second.step(counted)
    assert calls[0] == (1 if name == "SAM" else 2)  # SAM's first pass was the backward above
