"""The small model and the harness every wrapper's trajectory test uses.

A 6-8-3 MLP with BatchNorm1d and a parameter that never gets a gradient, split into two
parameter groups with different hyperparameters; SGD-momentum and AdamW bases, spelled out
in full for the naive oracles; fixed batches; and a count of the tensors an optimizer holds.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from tests import oracles
from tests.backends_under_test import CPU_BACKENDS, INTERPRETED

STEPS = 20
FUSED_STEPS = 5  # an interpreted backend's trajectories: its ops are proven op by op in tests/backends

# Compiled backends run every case; an interpreted one (Triton on a CPU: slow) runs the cases
# marked for it, which together use every op it implements, for fewer steps.
FUSED = [name for name in CPU_BACKENDS if name != "torch"]


def backend_cases(full, fused_subset):
    """pytest params: every case of ``full`` on compiled backends, ``fused_subset`` on interpreted ones."""
    return [(backend,) + case for backend in CPU_BACKENDS if backend not in INTERPRETED for case in full] + [
        (backend,) + case for backend in INTERPRETED for case in fused_subset
    ]


def steps(backend):
    return FUSED_STEPS if backend in INTERPRETED else STEPS


RTOL = 1e-6  # every backend matches the oracles to 1e-6 relative in fp32


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8, bias=False)  # BN follows: a bias would get only rounding noise
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)
        self.unused = nn.Parameter(torch.randn(5))  # in the optimizer, never in the graph

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


def make_net(seed=0) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet()


def twin(model):
    """An identical copy, for the oracle to train."""
    return copy.deepcopy(model)


# Base optimizers: (torch class, group-1 hyperparameters via kwargs, group-2 overrides, oracle defaults).
BASES = {
    "sgd": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=5e-4),
            dict(lr=0.1, weight_decay=0.0),
            dict(dampening=0.0, nesterov=False, maximize=False)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2),
              dict(lr=2e-2, weight_decay=0.0),
              dict(betas=(0.9, 0.999), eps=1e-8, amsgrad=False, maximize=False)),
}


def _split(model):
    first = [model.fc1.weight, model.fc2.weight, model.unused]
    second = [model.bn.weight, model.bn.bias, model.fc2.bias]
    return first, second


def flatmin_groups(model, base):
    """Two param groups: the first takes the base kwargs, the second overrides lr and decay."""
    first, second = _split(model)
    return [{"params": first}, {"params": second, **BASES[base][2]}]


def base_kwargs(base):
    return BASES[base][0], dict(BASES[base][1])


def oracle_groups(model, base, centralize=None, **extra):
    """The same two groups with every hyperparameter the oracles read spelled out."""
    first, second = _split(model)
    common = {**BASES[base][3], **BASES[base][1], "centralize": centralize, **extra}
    return [{"params": first, **common}, {"params": second, **common, **BASES[base][2]}]


def oracle_base(base, groups):
    return oracles.OracleSGD(groups) if base == "sgd" else oracles.OracleAdam(groups, decoupled=True)


def batches(n=STEPS, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(n)]


def loss_of(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def closure_for(model, batch, zero_grad, counter=None):
    """A torch-style closure: zero the gradients, forward, backward, return the loss."""

    def closure():
        if counter is not None:
            counter.append(1)
        zero_grad()
        loss = loss_of(model, batch)
        loss.backward()
        return loss

    return closure


def train_step(model, opt, batch):
    """One step of any flatmin optimizer: backward then ``step()`` for SGD/Adam/AdamW, the
    closure protocol for the wrappers (SAM, GAM, NSO)."""
    closure = closure_for(model, batch, opt.zero_grad)
    if hasattr(opt, "base_optimizer"):
        return opt.step(closure)
    closure()
    return opt.step()


def oracle_closure(model, batch):
    return closure_for(model, batch, lambda: model.zero_grad(set_to_none=True))


def assert_relative_close(actual, expected, rtol=1e-6, what="tensor"):
    """||actual - expected|| <= rtol * ||expected||: relative to the tensor as a whole, so that
    rounding-level differences in elements near zero (equally exact fp32 operation orders in
    the oracle and the kernels) do not count, while any real deviation does."""
    err = (actual.detach().double() - expected.detach().double()).norm()
    scale = expected.detach().double().norm()
    assert err <= rtol * scale, f"{what}: relative error {float(err / scale) if scale else float(err):.3g} > {rtol}"


def assert_same_model(actual, expected, rtol=1e-6):
    """Parameters and BN running statistics agree to ``rtol`` relative (fp32 rounding only)."""
    for (name, a), (_, e) in zip(actual.state_dict().items(), expected.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        assert_relative_close(a, e, rtol, name)


def extra_buffer_numel(optimizer, model) -> int:
    """Elements of every tensor the optimizer holds that is neither a parameter, nor the base
    optimizer's state, nor the model's: the wrapper's own buffers."""
    skip = {id(p) for p in model.parameters()}
    state = getattr(optimizer, "_step_state", None)
    skip |= {id(c) for c in getattr(state, "counters", {}).values()}  # NSO's one-element step counters
    for st in optimizer.base_optimizer.state.values():
        skip |= {id(t) for t in st.values() if torch.is_tensor(t)}
    seen, total = set(), 0

    def walk(obj):
        nonlocal total
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if torch.is_tensor(obj):
            if id(obj) not in skip:
                total += obj.numel()
        elif isinstance(obj, (nn.Module, torch.optim.Optimizer)) and obj is not optimizer:
            return
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(k)
                walk(v)
        elif isinstance(obj, (list, tuple, set)):
            for v in obj:
                walk(v)
        elif obj is optimizer or obj is state:  # the optimizer and its step state (buffers live there)
            walk(vars(obj))

    walk(optimizer)
    return total


def numel_with_grad(model):
    return sum(p.numel() for name, p in model.named_parameters() if name != "unused")


def numel_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def resume_run(make_opt, n_batches=6, split=3, before_load=None):
    """Train a net with ``make_opt(net)``, save model and optimizer after ``split`` batches and
    go on; then resume a differently initialised net and a fresh optimizer from the save and
    train the same batches. The two nets must end bit-identical. Returns (optimizer, saved
    optimizer state, resumed optimizer) for further checks; ``before_load(fresh_optimizer)``
    runs before the saved state is loaded."""
    data = batches(n_batches)
    net = make_net()
    opt = make_opt(net)
    for batch in data[:split]:
        opt.step(closure_for(net, batch, opt.zero_grad))
    saved_model, saved_opt = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    for batch in data[split:]:
        opt.step(closure_for(net, batch, opt.zero_grad))
    resumed = make_net(seed=5)
    resumed.load_state_dict(saved_model)
    opt2 = make_opt(resumed)
    if before_load is not None:
        before_load(opt2)
    opt2.load_state_dict(saved_opt)
    for batch in data[split:]:
        opt2.step(closure_for(resumed, batch, opt2.zero_grad))
    assert_same_model(resumed, net, rtol=0)  # bit-identical
    return opt, saved_opt, opt2


class PlainSGD(torch.optim.Optimizer):
    """SGD with momentum written as any third-party optimizer is: only the generic path can run it."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad + group["weight_decay"] * p
                if group["momentum"]:
                    buf = self.state[p].get("buf")
                    buf = d.clone() if buf is None else buf.mul_(group["momentum"]).add_(d)
                    self.state[p]["buf"] = d = buf
                p.add_(d, alpha=-group["lr"])
