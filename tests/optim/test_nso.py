"""NSO against the naive oracle; its noise, invariants, passes, buffers, resume and errors."""
import copy
import math

import pytest
import torch

import flatmin_kernels as fk
from tests import oracles

from . import models as M

SEED = 1234


def make(model, base, backend, **kw):
    cls, base_kw = M.base_kwargs(base)
    kw.setdefault("seed", SEED)
    return fk.NSO(M.flatmin_groups(model, base), cls, backend=backend, model=model, **kw, **base_kw)


def make_oracle(model, base, sigma, **kw):
    groups = M.oracle_groups(model, base, sigma=sigma)
    return oracles.OracleNSO(groups, M.oracle_base(base, groups), model=model, seed=SEED, sigma=sigma, **kw)


# (base, lam, num_perturbs, antithetic, exact_restore)
TRAJECTORIES = [
    ("sgd", 0.0, 1, True, True),
    ("adamw", 0.0, 1, True, True),
    ("sgd", 0.5, 2, True, True),
    ("adamw", 0.3, 1, True, False),
    ("sgd", 0.0, 2, False, False),
]


@pytest.mark.parametrize("backend,base,lam,k,antithetic,exact", M.backend_cases(
    TRAJECTORIES, [("adamw", 0.5, 1, True, True)]))
def test_trajectory_matches_oracle(backend, base, lam, k, antithetic, exact):
    sigma = 0.05
    net = M.make_net()
    ref = M.twin(net)
    opt = make(net, base, backend, sigma=sigma, lam=lam, num_perturbs=k, antithetic=antithetic,
               exact_restore=exact)
    oracle = make_oracle(ref, base, sigma, lam=lam, num_perturbs=k, antithetic=antithetic)
    calls = []
    for batch in M.batches(M.steps(backend)):
        expected = oracle.step(M.oracle_closure(ref, batch))
        loss = opt.step(M.closure_for(net, batch, opt.zero_grad, calls))
        torch.testing.assert_close(loss, expected, rtol=M.RTOL, atol=0)
    # (also without exact restore: the walk back W + U - 2U + U stays within fp32 rounding here)
    M.assert_same_model(net, ref, rtol=M.RTOL)
    passes = k * (2 if antithetic else 1) + (1 if lam > 0 else 0)  # 2k when lam == 0, else 1 + 2k
    assert len(calls) == passes * M.steps(backend) and opt.closure_calls() == passes
    if exact:
        assert torch.equal(net.unused, ref.unused)  # perturbed, then restored bit-exactly


def test_closure_that_sets_gradients_to_none():
    """A closure calling model.zero_grad() (not the optimizer's) still sums every pass."""
    net = M.make_net()
    ref = M.twin(net)
    opt = make(net, "sgd", "torch", sigma=0.05, lam=0.5)
    oracle = make_oracle(ref, "sgd", 0.05, lam=0.5)
    for batch in M.batches(5):
        oracle.step(M.oracle_closure(ref, batch))
        opt.step(M.closure_for(net, batch, lambda: net.zero_grad(set_to_none=True)))
    M.assert_same_model(net, ref)


def test_gradients_sum_in_place_with_optimizer_zero_grad():
    """With a torch-style closure no gradient tensor is allocated after the first pass: the
    passes add into p.grad (zero transient buffers); the only extra buffer is the backup."""
    net = M.make_net()
    opt = make(net, "sgd", "torch", lam=0.5, num_perturbs=2)
    grads_seen = []

    def closure():
        opt.zero_grad()
        loss = M.loss_of(net, M.batches(1)[0])
        loss.backward()
        grads_seen.append(net.fc1.weight.grad)
        return loss

    opt.step(closure)
    assert len(grads_seen) == 5 and all(g is grads_seen[0] for g in grads_seen)
    assert M.extra_buffer_numel(opt, net) == M.numel_trainable(net)


def test_no_buffer_without_exact_restore():
    net = M.make_net()
    opt = make(net, "adamw", "torch", exact_restore=False)
    opt.step(M.closure_for(net, M.batches(1)[0], opt.zero_grad))
    assert M.extra_buffer_numel(opt, net) == 0


# ----------------------------------------------------------------------------- noise


def perturbations(seed, sigma=0.1, sample_shape=(300, 200), step=0):
    """U of the first pass of a step, seen from inside the closure, for one big parameter."""
    w = torch.nn.Parameter(torch.zeros(sample_shape))
    v = torch.nn.Parameter(torch.zeros(7))
    opt = fk.NSO([{"params": [v]}, {"params": [w]}], torch.optim.SGD, sigma=sigma, seed=seed, lr=0.0)
    seen = []

    def closure():
        opt.zero_grad()
        seen.append((v.detach().clone(), w.detach().clone()))
        loss = (w.sum() + v.sum()) * 0
        loss.backward()
        return loss

    for _ in range(step + 1):
        seen.clear()
        opt.step(closure)
    return seen


@pytest.mark.parametrize("backend", M.FUSED + ["torch"])
def test_noise_is_the_contracts_philox_at_global_offsets(backend):
    v = torch.nn.Parameter(torch.zeros(3))
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = fk.NSO([{"params": [v]}, {"params": [w], "sigma": 0.5}], torch.optim.SGD, sigma=0.1,
                 seed=SEED, lr=0.0, backend=backend)
    seen = []

    def closure():
        seen.append(torch.cat([v.detach().flatten(), w.detach().flatten()]))
        (w.sum() * 0 + v.sum() * 0).backward()

    opt.step(closure)
    opt.step(closure)
    for t, (plus, minus) in enumerate([seen[0:2], seen[2:4]]):
        expected = torch.tensor([s * oracles.noise_normal(SEED, t, 0, j)
                                 for j, s in enumerate([0.1] * 3 + [0.5] * 4)], dtype=torch.float32)
        torch.testing.assert_close(plus, expected, rtol=1e-5, atol=1e-7)
        assert torch.equal(minus, -plus)  # antithetic: the same U, regenerated


def test_same_seed_same_noise_different_seed_different_noise():
    a, b, c = perturbations(7), perturbations(7), perturbations(8)
    assert torch.equal(a[0][1], b[0][1]) and torch.equal(a[0][0], b[0][0])
    assert not torch.equal(a[0][1], c[0][1])
    later = perturbations(7, step=1)
    assert not torch.equal(a[0][1], later[0][1])  # a fresh U every step


def test_noise_mean_zero_variance_sigma_squared():
    sigma = 0.1
    u = perturbations(3, sigma=sigma)[0][1].double().flatten()
    n = u.numel()
    # mean: standard error sigma / sqrt(n); variance: standard error ~ sigma^2 sqrt(2 / n). 5 s.e.
    assert abs(u.mean().item()) < 5 * sigma / math.sqrt(n)
    assert abs(u.var().item() - sigma**2) < 5 * sigma**2 * math.sqrt(2 / n)


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("sigma", [0.1, 3.0])
def test_antithetic_on_a_quadratic_is_the_base_update(sigma):
    """grad f(W+U) + grad f(W-U) = 2 grad f(W) for a quadratic: the noise cancels exactly (up to
    fp32 rounding), whatever its size; the one-sided estimate does not."""
    torch.manual_seed(0)
    a = torch.randn(6, 6)
    h = a @ a.T + torch.eye(6)
    b = torch.randn(6)
    w0 = torch.randn(6)

    def run(antithetic):
        w = torch.nn.Parameter(w0.clone())
        if antithetic is None:
            opt = torch.optim.SGD([w], lr=0.05, momentum=0.9)
        else:
            opt = fk.NSO([w], torch.optim.SGD, sigma=sigma, antithetic=antithetic, seed=SEED,
                         lr=0.05, momentum=0.9)

        def closure():
            opt.zero_grad()
            loss = 0.5 * w @ h @ w + b @ w
            loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)
        return w.detach()

    plain = run(None)
    torch.testing.assert_close(run(True), plain, rtol=1e-5, atol=1e-5 * sigma)
    assert (run(False) - plain).abs().max() > 100 * 1e-5 * sigma


@pytest.mark.parametrize("backend", M.FUSED + ["torch"])
def test_exact_restore_is_bit_exact(backend):
    net = M.make_net()
    before = copy.deepcopy(net.state_dict())
    opt = fk.NSO(net.parameters(), torch.optim.SGD, sigma=0.3, lam=0.5, model=net, backend=backend,
                 lr=0.0, momentum=0.9, weight_decay=5e-4)
    opt.step(M.closure_for(net, M.batches(1)[0], opt.zero_grad))
    for name, p in net.named_parameters():
        assert torch.equal(p, before[name]), name


def test_resume_bit_identical_with_drawn_seed():
    built = []

    def make_opt(net):
        built.append(make(net, "adamw", "torch", seed=None))
        return built[-1]

    def drawn_afresh(fresh):  # a new seed is drawn, then replaced by the saved generator state
        assert fresh.seed != built[0].seed

    opt, saved_opt, opt2 = M.resume_run(make_opt, before_load=drawn_afresh)
    assert saved_opt["flatmin"] == {"seed": opt.seed, "noise_step": 3}
    assert opt2.seed == opt.seed


# ----------------------------------------------------------------------------- errors and edge cases


def test_bad_input():
    params = M.make_net().parameters
    with pytest.raises(ValueError, match="sigma must be non-negative, got -0.01"):
        fk.NSO(params(), torch.optim.SGD, sigma=-0.01, lr=0.1)
    with pytest.raises(ValueError, match="num_perturbs must be an integer >= 1, got 0"):
        fk.NSO(params(), torch.optim.SGD, num_perturbs=0, lr=0.1)
    for lam in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"lam must be in \[0, 1\], got {lam}"):
            fk.NSO(params(), torch.optim.SGD, lam=lam, lr=0.1)
    opt = fk.NSO(params(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="NSO requires a closure"):
        opt.step()


def test_lam_one_is_the_base_optimizer():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ref = torch.nn.Parameter(w.detach().clone())
    opt = fk.NSO([w], torch.optim.SGD, lam=1.0, sigma=1.0, lr=0.1, momentum=0.9)
    base = fk.SGD([ref], lr=0.1, momentum=0.9)  # the same fused update, so bit-equal
    calls = []
    for p, o in ((w, opt), (ref, base)):
        def closure(p=p, o=o):
            calls.append(p)
            o.zero_grad()
            loss = (p ** 2).sum()
            loss.backward()
            return loss
        for _ in range(3):
            o.step(closure)
    assert torch.equal(w, ref) and sum(c is w for c in calls) == 3 and opt.closure_calls() == 1


@pytest.mark.parametrize("exact", [True, False])
def test_zero_gradient_and_non_finite_gradient(exact):
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = fk.NSO([w], torch.optim.SGD, lr=0.1, momentum=0.9, exact_restore=exact, seed=SEED)
    scale = [0.0]

    def closure():
        opt.zero_grad()
        loss = (w * scale[0]).sum()
        loss.backward()
        return loss

    opt.step(closure)  # zero gradient: no NaN, no move
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, torch.tensor([1.0, 2.0]), rtol=0, atol=1e-7 if not exact else 0)
    before = w.detach().clone()
    scale[0] = float("inf")
    opt.step(closure)  # non-finite: the step is skipped, the weights come back
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, before, rtol=0, atol=1e-7 if not exact else 0)
    assert torch.isfinite(opt.state[w]["momentum_buffer"]).all()
