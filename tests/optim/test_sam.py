"""SAM / ASAM against the naive oracle, its invariants, its protocol and its errors."""
import copy

import pytest
import torch

import flatmin_kernels as fk
from tests import oracles

from . import models as M

from ..backends_under_test import CPU_BACKENDS as BACKENDS, INTERPRETED  # noqa: E402


def make(model, base, backend, **kw):
    cls, base_kw = M.base_kwargs(base)
    return fk.SAM(M.flatmin_groups(model, base), cls, backend=backend, model=model, **kw, **base_kw)


def make_oracle(model, base, centralize=None, **kw):
    groups = M.oracle_groups(model, base, centralize=centralize)
    return oracles.OracleSAM(groups, M.oracle_base(base, groups), model=model, **kw)


TRAJECTORIES = [(base, adaptive, api) for base in ("sgd", "adamw") for adaptive in (False, True)
                for api in ("closure", "two_call")]


@pytest.mark.parametrize("backend,base,adaptive,api", M.backend_cases(
    TRAJECTORIES, [("adamw", True, "closure"), ("sgd", False, "two_call")]))
def test_trajectory_matches_oracle(backend, base, adaptive, api):
    rho = 0.5 if adaptive else 0.05  # ASAM's radius is about 10x SAM's
    net = M.make_net()
    ref = M.twin(net)
    opt = make(net, base, backend, rho=rho, adaptive=adaptive)
    oracle = make_oracle(ref, base, rho=rho, adaptive=adaptive)
    calls = []
    for batch in M.batches(M.steps(backend)):
        expected = oracle.step(M.oracle_closure(ref, batch))
        closure = M.closure_for(net, batch, opt.zero_grad, calls)
        if api == "closure":
            loss = opt.step(closure)
        else:  # davda54's loop
            loss = closure()
            opt.first_step(zero_grad=True)
            M.loss_of(net, batch).backward()
            opt.second_step(zero_grad=True)
        torch.testing.assert_close(loss, expected, rtol=M.RTOL, atol=0)
    M.assert_same_model(net, ref, rtol=M.RTOL)
    assert len(calls) == (2 if api == "closure" else 1) * M.steps(backend)  # closure calls per step: 2
    assert net.unused.grad is None and torch.equal(net.unused, ref.unused)


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_gc_on_ascent_and_update_matches_oracle(base):
    net = M.make_net()
    ref = M.twin(net)
    opt = make(net, base, "torch", centralize="gc")
    oracle = make_oracle(ref, base, centralize="gc", rho=0.05)
    for batch in M.batches(8):
        opt.step(M.closure_for(net, batch, opt.zero_grad))
        oracle.step(M.oracle_closure(ref, batch))
    M.assert_same_model(net, ref)


def test_pytorch_optimizer_spellings():
    net = M.make_net()
    opt = fk.SAM(net.parameters(), torch.optim.SGD, lr=0.1, use_gc=True, perturb_eps=1e-8)
    # use_gc is pytorch_optimizer's GCSAM, not flatmin's centralize: the groups keep centralize=None
    assert opt.param_groups[0]["centralize"] is None and opt.use_gc and opt.eps == 1e-8
    assert "use_gc" not in opt.base_optimizer.defaults
    with pytest.raises(ValueError, match="two placements of GC; choose one"):
        fk.SAM(net.parameters(), torch.optim.SGD, lr=0.1, use_gc=True, centralize="gcc")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("adaptive", [False, True])
def test_use_gc_reproduces_pytorch_optimizers_gcsam(backend, adaptive):
    """Norm of the raw gradient, ascent along the centralized gradient, no GC in the update."""
    net, ref = M.make_net(), M.make_net()
    rho = 0.5 if adaptive else 0.05
    opt = fk.SAM(net.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, use_gc=True, lr=0.1,
                 momentum=0.9, backend=backend)
    base = oracles.OracleSGD([dict(params=list(ref.parameters()), lr=0.1, momentum=0.9, dampening=0.0,
                                   weight_decay=0.0, nesterov=False, maximize=False, centralize=None)])
    oracle = oracles.OracleSAM(base.groups, base, rho=rho, adaptive=adaptive, use_gc=True)
    for batch in M.batches(4 if backend in INTERPRETED else 8):
        opt.step(M.closure_for(net, batch, opt.zero_grad))
        oracle.step(M.oracle_closure(ref, batch))
    M.assert_same_model(net, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_generic_base_optimizer_matches_oracle(backend):
    net = M.make_net()
    ref = M.twin(net)
    groups = lambda m: [{"params": M._split(m)[0]}, {"params": M._split(m)[1], "lr": 0.1}]  # noqa: E731
    opt = fk.SAM(groups(net), M.PlainSGD, rho=0.05, adaptive=True, model=net, backend=backend,
                 lr=0.05, momentum=0.9, weight_decay=5e-4)
    assert not opt.fused
    oracle = oracles.OracleSAM(groups(ref), M.PlainSGD(groups(ref), lr=0.05, momentum=0.9, weight_decay=5e-4),
                               rho=0.05, adaptive=True, model=ref)
    # OracleSAM reads group["centralize"]; M.PlainSGD's groups have none.
    for g in oracle.groups:
        g["centralize"] = None
    for batch in M.batches(10):
        opt.step(M.closure_for(net, batch, opt.zero_grad))
        oracle.step(M.oracle_closure(ref, batch))
    M.assert_same_model(net, ref, rtol=M.RTOL)


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("centralize", [None, "gc"])
def test_ascent_has_length_rho(backend, centralize):
    net = M.make_net()
    opt = fk.SAM(net.parameters(), torch.optim.SGD, rho=0.07, centralize=centralize, lr=0.1, backend=backend)
    before = {p: p.detach().clone() for p in net.parameters()}
    M.loss_of(net, M.batches(1)[0]).backward()
    opt.first_step()
    dist = sum(((p - before[p]) ** 2).sum() for p in net.parameters()).sqrt()
    torch.testing.assert_close(dist, torch.tensor(0.07), rtol=2e-6, atol=0)
    assert torch.equal(net.unused, before[net.unused])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base_cls", [torch.optim.SGD, M.PlainSGD])
def test_restore_is_bit_exact(backend, base_cls):
    net = M.make_net()
    before = copy.deepcopy(net.state_dict())
    opt = fk.SAM(net.parameters(), base_cls, rho=0.3, lr=0.0, backend=backend)
    for batch in M.batches(3):
        opt.step(M.closure_for(net, batch, opt.zero_grad))
    for name, p in net.named_parameters():
        assert torch.equal(p, before[name]), name


def test_one_backup_buffer():
    net = M.make_net()
    opt = make(net, "adamw", "torch")
    opt.step(M.closure_for(net, M.batches(1)[0], opt.zero_grad))
    assert M.extra_buffer_numel(opt, net) == M.numel_with_grad(net)  # exactly one param-sized buffer
    assert len(opt.state) == len(list(net.parameters())) - 1  # AdamW state for the params with grads


# ----------------------------------------------------------------------------- protocols


def test_step_after_first_step_is_the_second_step():
    """HF Trainer style: the user runs both passes, the framework calls step() with no closure."""
    net, ref = M.make_net(), M.make_net()
    opt = make(net, "sgd", "torch")
    opt_ref = make(ref, "sgd", "torch")
    for batch in M.batches(3):
        M.loss_of(net, batch).backward()
        opt.first_step(zero_grad=True)
        M.loss_of(net, batch).backward()
        assert opt.step() is None
        opt.zero_grad()
        opt_ref.step(M.closure_for(ref, batch, opt_ref.zero_grad))
    M.assert_same_model(net, ref, rtol=0)  # bit-identical


def test_davda54_closure_with_precomputed_gradient():
    """davda54's step(closure): backward at w already done, the closure only backprops."""
    net, ref = M.make_net(), M.make_net()
    opt = make(net, "sgd", "torch")
    opt_ref = make(ref, "sgd", "torch")
    for batch in M.batches(3):
        calls = []

        def closure():
            calls.append(1)
            loss = M.loss_of(net, batch)
            loss.backward()
            return loss

        M.loss_of(net, batch).backward()
        loss = opt.step(closure)
        assert len(calls) == 1 and loss.item() > 0
        opt_ref.step(M.closure_for(ref, batch, opt_ref.zero_grad))
    M.assert_same_model(net, ref, rtol=0)  # bit-identical


@pytest.mark.filterwarnings("error::UserWarning")  # no scheduler-order warning either
def test_scheduler_and_state_dict_resume_bit_identical():
    batches = M.batches(10)
    net = M.make_net()
    opt = make(net, "adamw", "torch")
    sched = torch.optim.lr_scheduler.StepLR(opt.base_optimizer, step_size=3, gamma=0.5)
    for batch in batches[:5]:
        opt.step(M.closure_for(net, batch, opt.zero_grad))
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)  # the shared groups see the schedule
    saved_model, saved_opt = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    assert all("exp_avg" in s for s in saved_opt["state"].values())  # the base's moments are saved
    for batch in batches[5:]:
        opt.step(M.closure_for(net, batch, opt.zero_grad))

    resumed = M.make_net(seed=7)
    resumed.load_state_dict(saved_model)
    opt2 = make(resumed, "adamw", "torch")
    opt2.load_state_dict(saved_opt)
    assert opt2.base_optimizer.param_groups is opt2.param_groups and opt2.state is opt2.base_optimizer.state
    for batch in batches[5:]:
        opt2.step(M.closure_for(resumed, batch, opt2.zero_grad))
    M.assert_same_model(resumed, net, rtol=0)  # bit-identical


# ----------------------------------------------------------------------------- errors and edge cases


def test_bad_input():
    params = M.make_net().parameters
    with pytest.raises(ValueError, match="rho must be non-negative, got -0.1"):
        fk.SAM(params(), torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(ValueError, match="rho must be non-negative"):
        fk.SAM([{"params": list(params()), "rho": -1.0}], torch.optim.SGD, lr=0.1)
    with pytest.raises(TypeError, match="base_optimizer must be an optimizer class"):
        fk.SAM(params(), torch.optim.SGD(params(), lr=0.1))
    with pytest.raises(ValueError, match="unknown centralize"):
        fk.SAM(params(), torch.optim.SGD, centralize="yes", lr=0.1)
    opt = fk.SAM(params(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="SAM requires a closure"):
        opt.step()
    with pytest.raises(RuntimeError, match=r"second_step\(\) called before first_step\(\)"):
        opt.second_step()


def test_first_step_twice_is_refused():
    net = M.make_net()
    opt = fk.SAM(net.parameters(), torch.optim.SGD, lr=0.1)
    M.loss_of(net, M.batches(1)[0]).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="first_step\\(\\) called twice"):
        opt.first_step()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("adaptive", [False, True])
def test_zero_gradient_gives_no_nan(backend, adaptive):
    w = torch.nn.Parameter(torch.ones(3))
    opt = fk.SAM([w], torch.optim.SGD, adaptive=adaptive, lr=0.1, backend=backend)
    w.grad = torch.zeros(3)
    opt.first_step()
    assert torch.equal(w, torch.ones(3))
    w.grad = torch.zeros(3)
    opt.second_step()
    assert torch.equal(w, torch.ones(3))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base_cls", [torch.optim.SGD, torch.optim.AdamW, M.PlainSGD])
def test_non_finite_gradient_skips_perturbation_and_step(backend, base_cls):
    w = torch.nn.Parameter(torch.ones(4))
    v = torch.nn.Parameter(torch.ones(2))
    opt = fk.SAM([w, v], base_cls, lr=0.1, backend=backend)
    w.grad = torch.tensor([1.0, float("nan"), 1.0, 1.0])
    v.grad = torch.ones(2)
    opt.first_step()
    assert torch.equal(w, torch.ones(4)) and torch.equal(v, torch.ones(2))  # not perturbed
    w.grad, v.grad = torch.ones(4), torch.ones(2)
    opt.second_step()
    assert torch.equal(w, torch.ones(4)) and torch.equal(v, torch.ones(2))  # no update either
    w.grad, v.grad = torch.ones(4), torch.ones(2)  # and the next step is a normal one
    opt.first_step()
    opt.second_step()
    assert (w < 1).all() and torch.isfinite(w).all()


@pytest.mark.parametrize("base_cls", [torch.optim.SGD, M.PlainSGD])
def test_parameter_without_second_gradient_is_restored(base_cls):
    """Conditional computation (e.g. an expert not routed in pass 2): perturbed in pass 1, no
    gradient in pass 2 -> back to w and not updated; one with a gradient only in pass 2 is updated."""
    a, b, c = (torch.nn.Parameter(torch.full((3,), v)) for v in (1.0, 2.0, 3.0))
    opt = fk.SAM([a, b, c], base_cls, lr=0.1, rho=0.5)
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.first_step(zero_grad=True)
    assert not torch.equal(b, torch.full((3,), 2.0))
    a.grad, c.grad = torch.ones(3), torch.ones(3)
    opt.second_step()
    torch.testing.assert_close(a, torch.full((3,), 0.9))
    assert torch.equal(b, torch.full((3,), 2.0))
    torch.testing.assert_close(c, torch.full((3,), 2.9))


def test_a_shallow_copy_of_the_optimizer_shares_its_step_state():
    """What Lightning's LightningOptimizer is: a subclass instance with a copy of the __dict__.
    A first step through it must be the optimizer's first step (not a split state)."""
    net, ref = M.make_net(), M.make_net()
    opt = fk.SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, backend="torch")
    ref_opt = fk.SAM(ref.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, backend="torch")
    lightning_like = type("LightningSAM", (type(opt),), {}).__new__(type("LightningSAM", (type(opt),), {}))
    lightning_like.__dict__ = dict(opt.__dict__)
    for batch in M.batches(3):
        M.loss_of(net, batch).backward()
        lightning_like.first_step(zero_grad=True)
        M.loss_of(net, batch).backward()
        opt.step(lambda: None)  # Lightning's opt.step(): the real optimizer, already perturbed: second step
        opt.zero_grad()
        M.loss_of(ref, batch).backward()
        ref_opt.first_step(zero_grad=True)
        M.loss_of(ref, batch).backward()
        ref_opt.second_step(zero_grad=True)
    M.assert_same_model(net, ref)


# ----------------------------------------------------------------------------- sparse gradients

SPARSE_RHO, SPARSE_LR = 0.05, 0.1


def embedding_model():
    torch.manual_seed(0)
    return torch.nn.Embedding(10, 4, sparse=True), torch.nn.Linear(4, 2)


def loss_of(emb, lin, step):
    return (lin(emb(torch.tensor([1, 3, step]))) ** 2).sum()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sparse_gradient_is_not_perturbed_and_takes_torchs_sgd(backend):
    """An embedding with sparse=True: the ascent is over the dense parameters; the sparse one
    takes torch's SGD from its gradient at the perturbed point (as fk.SGD does alone)."""
    emb, lin = embedding_model()
    ref_emb, ref_lin = embedding_model()
    opt = fk.SAM(list(emb.parameters()) + list(lin.parameters()), torch.optim.SGD, rho=SPARSE_RHO, lr=SPARSE_LR, backend=backend)
    for step in range(3):
        def closure():
            opt.zero_grad()
            loss = loss_of(emb, lin, step)
            loss.backward()
            return loss
        opt.step(closure)
        # the oracle: the ascent over the dense parameters only, SGD on everything from the gradient there
        w, dense = ref_emb.weight, list(ref_lin.parameters())
        grads = torch.autograd.grad(loss_of(ref_emb, ref_lin, step), dense)
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        with torch.no_grad():
            e = [SPARSE_RHO * g / (norm + 1e-12) for g in grads]
            for p, d in zip(dense, e):
                p.add_(d)
        grads = torch.autograd.grad(loss_of(ref_emb, ref_lin, step), [w] + dense)
        with torch.no_grad():
            for p, d in zip(dense, e):
                p.sub_(d)
            for p, g in zip([w] + dense, grads):
                p.sub_(SPARSE_LR * g.to_dense())
    for a, b in zip(list(emb.parameters()) + list(lin.parameters()), [ref_emb.weight] + list(ref_lin.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
