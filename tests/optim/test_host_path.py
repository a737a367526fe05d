"""The host path (issue 9): a plan built once and reused; rebuilt only on real changes; a warmed-up
step builds no table and reads nothing back from the device; CUDA-graph capture and replay."""
import contextlib

import pytest
import torch

import flatmin_kernels as fk
from flatmin_kernels import backends

from ..backends_under_test import CPU_BACKENDS as BACKENDS
from . import models as M

KINDS = {
    "adamw": lambda net, b: fk.AdamW(net.parameters(), lr=1e-2, centralize="gc", backend=b),
    "sgd": lambda net, b: fk.SGD(net.parameters(), lr=0.1, momentum=0.9, backend=b),
    "sam": lambda net, b: fk.SAM(net.parameters(), fk.AdamW, rho=0.05, lr=1e-2, model=net, backend=b),
    "gam": lambda net, b: fk.GAM(net.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, model=net, backend=b),
    "nso": lambda net, b: fk.NSO(net.parameters(), fk.AdamW, sigma=0.01, lr=1e-2, seed=1, model=net, backend=b),
}


def builds(opt):
    paths = [opt.host_path] + ([opt.noise_path] if isinstance(opt, fk.NSO) else [])
    return sum(p.builds for p in paths)


def plan_of(opt):
    return opt.host_path.plan


@contextlib.contextmanager
def no_table_may_be_built(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a table was built in a steady-state step")

    for name in fk.available_backends():
        monkeypatch.setattr(backends.get_backend(name).Table, "__init__", refuse)
    yield
    monkeypatch.undo()


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """Any read of a tensor's value on the host raises (item, bool, float, int, tolist, numpy)."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a device value was read on the host")

    for attr in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, attr, refuse)
    yield
    monkeypatch.undo()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_steady_state_builds_nothing_and_reads_nothing_back(kind, backend, monkeypatch):
    """Gradients re-allocated every pass (set_to_none) refresh pointers only."""
    net = M.make_net()
    opt = KINDS[kind](net, backend)
    data = M.batches(4)
    for batch in data[:2]:
        M.train_step(net, opt, batch)
    built = builds(opt)
    with no_table_may_be_built(monkeypatch), no_host_reads(monkeypatch):
        for batch in data[2:]:
            M.train_step(net, opt, batch)
    assert builds(opt) == built


@pytest.mark.parametrize("kind", list(KINDS))
def test_real_changes_rebuild_the_plan(kind):
    net = M.make_net()
    opt = KINDS[kind](net, "torch")
    batch = M.batches(1)[0]
    M.train_step(net, opt, batch)
    old = plan_of(opt)
    opt.load_state_dict(opt.state_dict())
    M.train_step(net, opt, batch)
    assert plan_of(opt) is not old
    old = plan_of(opt)
    extra = torch.nn.Linear(3, 3)  # a param group added: its parameters are updated from now on
    opt.add_param_group(dict(params=list(extra.parameters())))
    before = extra.weight.detach().clone()

    def with_extra():
        opt.zero_grad()
        loss = M.loss_of(net, batch) + extra(torch.ones(2, 3)).pow(2).sum()
        loss.backward()
        return loss

    if isinstance(opt, (fk.SGD, fk.AdamW)):
        with_extra()
        opt.step()
    else:
        opt.step(with_extra)
    assert plan_of(opt) is not old and not torch.equal(extra.weight, before)


def test_a_parameter_changing_dtype_rebuilds_and_keeps_training():
    """module.to(torch.float64) under an optimizer: the plan notices, the parameters train in fp64."""
    net = M.make_net()
    opt = fk.AdamW(net.parameters(), lr=1e-2, backend="auto")
    batch = M.batches(1)[0]
    M.train_step(net, opt, batch)
    built = opt.host_path.builds
    net.double()
    x, y = batch
    M.train_step(net, opt, (x.double(), y))
    assert opt.host_path.builds == built + 1
    assert all(p.dtype == torch.float64 and torch.isfinite(p).all() for p in net.parameters())


def test_a_parameter_gaining_a_gradient_joins_the_plan():
    net = M.make_net()
    opt = fk.SGD(net.parameters(), lr=0.1)
    batch = M.batches(1)[0]
    M.train_step(net, opt, batch)  # net.unused has no gradient
    before = net.unused.detach().clone()
    opt.zero_grad()
    (M.loss_of(net, batch) + net.unused.sum()).backward()
    opt.step()
    assert not torch.equal(net.unused, before)


def test_no_plan_is_built_during_graph_capture(monkeypatch):
    net = M.make_net()
    opt = fk.AdamW(net.parameters(), lr=1e-2)
    batch = M.batches(1)[0]
    monkeypatch.setattr("flatmin_kernels.optim.host.capturing", lambda: True)
    with pytest.raises(RuntimeError, match="would build a new plan .tables. during CUDA graph capture"):
        M.train_step(net, opt, batch)
    monkeypatch.undo()
    M.train_step(net, opt, batch)  # warmed up eagerly
    monkeypatch.setattr("flatmin_kernels.optim.host.capturing", lambda: True)
    M.train_step(net, opt, batch)  # a steady-state step is fine


# ----------------------------------------------------------------------------- CUDA graphs (GPU only)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cpp", "torch"])
@pytest.mark.parametrize("kind", ["adamw", "sam", "gam", "nso"])
def test_capture_and_three_replays_equal_three_eager_steps(kind, backend):
    if backend not in fk.available_backends():
        pytest.skip(f"{backend} is not available")
    torch.manual_seed(0)
    nets = [M.make_net().cuda() for _ in range(2)]
    opts = [KINDS[kind](n, backend) for n in nets]
    batch = [t.cuda() for t in M.batches(1)[0]]
    static = [[torch.randn_like(p) * 1e-2 for p in n.parameters()] for n in nets]

    def closure_for(net, grads):
        def closure():
            for p, g in zip(net.parameters(), grads):
                p.grad = g  # static gradients: the graph reads them where they are
            return torch.zeros((), device="cuda")
        return closure

    def one_step(i):
        if isinstance(opts[i], fk.AdamW):
            closure_for(nets[i], static[i])()
            opts[i].step()
        else:
            opts[i].step(closure_for(nets[i], static[i]))

    for i in range(2):  # warm-up (plans, state) on a side stream, as torch's capture recipe says
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            one_step(i)
        torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        one_step(0)
    for _ in range(3):  # capturing records the step without running it
        graph.replay()
    for _ in range(3):
        one_step(1)
    torch.cuda.synchronize()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_capturable_is_accepted_everywhere_and_refused_where_it_cannot_hold():
    net = M.make_net()
    fk.SGD(net.parameters(), lr=0.1, capturable=True)
    for base in (torch.optim.SGD, torch.optim.AdamW, fk.AdamW):
        opt = fk.SAM(net.parameters(), base, lr=0.1, capturable=True)
        assert opt.capturable
        assert opt.base_optimizer.defaults.get("capturable", True)  # forwarded where the base takes it
    with pytest.raises(ValueError, match="capturable=True needs a base optimizer flatmin can fuse"):
        fk.GAM(net.parameters(), torch.optim.RMSprop, lr=0.1, capturable=True)
