"""flatmin's SGD, Adam and AdamW: torch.optim's trajectories, GC against the oracles, errors, resume."""
import copy

import pytest
import torch

import flatmin_kernels as fk
from flatmin_kernels import backends

from .. import oracles
from .models import assert_relative_close

from ..backends_under_test import CPU_BACKENDS as BACKENDS  # noqa: E402


# ----------------------------------------------------------------------------- a small model


class ConvNet(torch.nn.Module):
    """Conv2d + Linear, plus a layer that never receives a gradient."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.fc = torch.nn.Linear(27, 4)
        self.unused = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def make_model(seed=0):
    torch.manual_seed(seed)
    return ConvNet()


def batches(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 2, 5, 5, generator=gen), torch.randn(4, 4, generator=gen)) for _ in range(n)]


def groups_of(model, **conv_overrides):
    return [
        dict(params=[model.conv.weight, model.conv.bias], **conv_overrides),
        dict(params=[model.fc.weight, model.fc.bias, model.unused.weight, model.unused.bias]),
    ]


def train(model, opt, data, sign=1.0):
    """Minimise the MSE (sign=1), or hand a maximizing optimizer its negative (sign=-1)."""
    for x, y in data:
        opt.zero_grad()
        (sign * torch.nn.functional.mse_loss(model(x), y)).backward()
        opt.step()


def assert_models_close(a, b, rtol=1e-6):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert_relative_close(p, q, rtol, name)


# ----------------------------------------------------------------------------- torch.optim parity

SGD_CONFIGS = {
    "plain": dict(lr=0.05),
    "momentum": dict(lr=0.05, momentum=0.9, dampening=0.1),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "weight_decay": dict(lr=0.05, momentum=0.5, weight_decay=1e-2),
    "maximize": dict(lr=0.01, momentum=0.9, maximize=True),
}
ADAM_CONFIGS = {
    "plain": dict(lr=1e-2),
    "amsgrad": dict(lr=1e-2, amsgrad=True, weight_decay=1e-2),
    "betas_eps": dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
    "maximize": dict(lr=1e-3, maximize=True),
}
PARITY = (
    [(fk.SGD, torch.optim.SGD, name, cfg) for name, cfg in SGD_CONFIGS.items()]
    + [(fk.Adam, torch.optim.Adam, name, cfg) for name, cfg in ADAM_CONFIGS.items()]
    + [(fk.AdamW, torch.optim.AdamW, name, cfg) for name, cfg in ADAM_CONFIGS.items()]
)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ours,theirs,name,cfg", PARITY, ids=[f"{o.__name__}-{n}" for o, _, n, _ in PARITY])
def test_matches_torch_optim_for_50_steps(ours, theirs, name, cfg, backend):
    data = batches(50)
    a, b = make_model(), make_model()
    sign = -1.0 if cfg.get("maximize") else 1.0
    train(a, ours(groups_of(a, lr=cfg["lr"] * 2), **cfg, backend=backend), data, sign)
    train(b, theirs(groups_of(b, lr=cfg["lr"] * 2), **cfg), data, sign)
    assert torch.isfinite(a.fc.weight).all()
    assert_models_close(a, b)
    assert torch.equal(a.unused.weight, make_model().unused.weight), "a parameter without gradient moved"


@pytest.mark.parametrize("ours,theirs", [(fk.SGD, torch.optim.SGD), (fk.Adam, torch.optim.Adam), (fk.AdamW, torch.optim.AdamW)])
def test_same_defaults_and_state_dict_layout_as_torch(ours, theirs):
    a, b = make_model(), make_model()
    oa, ob = ours(a.parameters(), momentum=0.9) if ours is fk.SGD else ours(a.parameters()), \
        theirs(b.parameters(), momentum=0.9) if theirs is torch.optim.SGD else theirs(b.parameters())
    assert {k: v for k, v in oa.defaults.items() if k != "centralize"} == ob.defaults
    train(a, oa, batches(2))
    train(b, ob, batches(2))
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for key in sa["state"]:
        assert sa["state"][key].keys() == sb["state"][key].keys()
    assert set(sa["param_groups"][0]) == set(sb["param_groups"][0]) | {"centralize"}


@pytest.mark.parametrize("ours,theirs,cfg", [
    (fk.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    (fk.AdamW, torch.optim.AdamW, dict(lr=1e-2, amsgrad=True)),
])
def test_state_dicts_move_between_torch_and_flatmin(ours, theirs, cfg):
    data = batches(10)
    a, b = make_model(), make_model()
    oa, ob = theirs(a.parameters(), **cfg), theirs(b.parameters(), **cfg)
    train(a, oa, data[:5])
    train(b, ob, data[:5])
    # continue a with flatmin from torch's state, b with torch
    fa = ours(a.parameters(), **cfg)
    fa.load_state_dict(oa.state_dict())
    train(a, fa, data[5:])
    train(b, ob, data[5:])
    assert_models_close(a, b)
    # and back: torch loads flatmin's state
    tb = theirs(a.parameters(), **cfg)
    tb.load_state_dict(fa.state_dict())
    train(a, tb, data[:3])
    train(b, ob, data[:3])
    assert_models_close(a, b)


# ----------------------------------------------------------------------------- GC against the oracle


def gc_params(seed=0):
    """Linear and conv weights, a bias, a 1-element and a 0-element tensor, a scalar-like (1, 1)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3, 3, 3), (5, 7), (5,), (1,), (1, 1), (0, 5)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def gc_loss(params, step):
    """A loss whose gradients differ in every element and every step."""
    total = 0
    for i, p in enumerate(params):
        w = torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (i + 1) + 0.1 * step
        total = total + (torch.sin(p * w) + 0.5 * p * p * (1 + w * w)).sum()
    return total


def run_gc(make_opt, params, steps=15):
    opt = make_opt(params)
    for t in range(steps):
        for p in params:
            p.grad = None
        gc_loss(params, t).backward()
        opt.step()


GC_CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-2), lambda g: oracles.OracleSGD(g)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True), lambda g: oracles.OracleSGD(g)),
    ("Adam", dict(lr=1e-2, weight_decay=1e-2, amsgrad=True), lambda g: oracles.OracleAdam(g, decoupled=False)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1), lambda g: oracles.OracleAdam(g, decoupled=True)),
]
FULL_DEFAULTS = {
    "SGD": dict(momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False),
    "Adam": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, maximize=False),
    "AdamW": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["gc", "gcc"])
@pytest.mark.parametrize("cls,cfg,make_oracle", GC_CASES, ids=[f"{c}{i}" for i, (c, _, _) in enumerate(GC_CASES)])
def test_gc_matches_naive_oracle(cls, cfg, make_oracle, mode, backend):
    ours, theirs = gc_params(), gc_params()
    run_gc(lambda ps: getattr(fk, cls)(ps, centralize=mode, backend=backend, **cfg), ours)
    hp = dict(FULL_DEFAULTS[cls], **cfg)
    run_gc(lambda ps: make_oracle([dict(params=ps, centralize=mode, **hp)]), theirs)
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert_relative_close(p, q, 1e-6, f"tensor {i} {tuple(p.shape)}")


def test_gc_is_per_group_and_changes_the_trajectory():
    a, b = gc_params(), gc_params()
    run_gc(lambda ps: fk.SGD([dict(params=ps[:2], centralize="gc"), dict(params=ps[2:])], lr=0.05), a)
    run_gc(lambda ps: fk.SGD(ps, lr=0.05), b)
    assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
    for p, q in zip(a[2:], b[2:]):
        assert torch.equal(p, q), "GC must leave the group without it alone"


def test_sgd_gc_keeps_each_output_units_weight_mean():
    params = gc_params()
    means = [p.detach().reshape(p.shape[0], -1).mean(1).clone() for p in params[:2]]
    run_gc(lambda ps: fk.SGD(ps, lr=0.05, momentum=0.9, centralize="gc"), params)
    for p, m in zip(params[:2], means):
        torch.testing.assert_close(p.detach().reshape(p.shape[0], -1).mean(1), m, atol=1e-6, rtol=0)


def test_gcc_leaves_2d_weights_alone():
    a, b = gc_params(), gc_params()
    run_gc(lambda ps: fk.SGD(ps, lr=0.05, centralize="gcc"), a)
    run_gc(lambda ps: fk.SGD(ps, lr=0.05), b)
    assert not torch.allclose(a[0], b[0])  # conv weight centralized
    for p, q in zip(a[1:], b[1:]):
        assert torch.equal(p, q)


def test_centralize_gradient_public_function():
    g = torch.randn(6, 4, 3, 3)
    want = oracles.centralized(g.clone(), "gc")
    out = fk.centralize_gradient(g)
    assert out is g and torch.allclose(g, want, atol=1e-6)
    assert g.reshape(6, -1).mean(1).abs().max() < 1e-6
    lin = torch.randn(5, 7)
    assert torch.equal(fk.centralize_gradient(lin.clone(), conv_only=True), lin)
    bias = torch.randn(5)
    assert torch.equal(fk.centralize_gradient(bias.clone()), bias)
    with pytest.raises(TypeError, match="dense real tensor"):
        fk.centralize_gradient(torch.randn(3, 3, dtype=torch.complex64))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("make,match", [
    (lambda ps: fk.SGD(ps, lr=-1), "Invalid learning rate"),
    (lambda ps: fk.SGD(ps, lr=0.1, momentum=-0.5), "Invalid momentum"),
    (lambda ps: fk.SGD(ps, lr=0.1, weight_decay=-1), "Invalid weight_decay"),
    (lambda ps: fk.Adam(ps, lr=-1e-3), "Invalid learning rate"),
    (lambda ps: fk.Adam(ps, betas=(1.0, 0.999)), "Invalid beta parameter at index 0"),
    (lambda ps: fk.AdamW(ps, betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
    (lambda ps: fk.AdamW(ps, weight_decay=-0.1), "Invalid weight_decay"),
    (lambda ps: fk.SGD(ps, lr=0.1, centralize="mean"), "unknown centralize value 'mean'"),
    (lambda ps: fk.Adam([dict(params=ps, centralize="rows")]), "unknown centralize value 'rows'"),
    (lambda ps: fk.AdamW(ps, backend="cuda"), "unknown backend 'cuda'"),
])
def test_bad_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make(gc_params())


def test_unavailable_backend_says_why(monkeypatch):
    monkeypatch.setitem(backends._MODULES, "cpp", "flatmin_kernels.backends.no_such_backend")
    backends._load.cache_clear()
    try:
        with pytest.raises(backends.BackendUnavailableError, match="backend 'cpp' is not available here: not implemented"):
            fk.SGD(gc_params(), lr=0.1, backend="cpp")
        assert "cpp" not in fk.available_backends()
    finally:
        backends._load.cache_clear()


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("FLATMIN_BACKEND", "torch")
    assert backends.resolve("auto", torch.device("cpu")).name == "torch"
    monkeypatch.setenv("FLATMIN_BACKEND", "fortran")
    with pytest.raises(ValueError, match="FLATMIN_BACKEND='fortran' is not a backend"):
        backends.resolve("auto", torch.device("cpu"))


# ----------------------------------------------------------------------------- resume and AMP


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls,cfg", [(fk.SGD, dict(lr=0.05, momentum=0.9, centralize="gc")),
                                     (fk.AdamW, dict(lr=1e-2, amsgrad=True, centralize="gc"))])
def test_state_dict_resume_is_bit_identical(cls, cfg, backend):
    data = batches(20)
    a = make_model()
    oa = cls(groups_of(a), **cfg, backend=backend)
    train(a, oa, data[:10])
    saved_model, saved_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(oa.state_dict())
    train(a, oa, data[10:])

    b = make_model(seed=5)
    b.load_state_dict(saved_model)
    ob = cls(groups_of(b), **{**cfg, "centralize": None}, backend=backend)
    ob.load_state_dict(saved_opt)
    assert ob.param_groups[0]["centralize"] == "gc"
    train(b, ob, data[10:])
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls", [fk.SGD, fk.AdamW])
def test_grad_scaler_skips_non_finite_steps_and_unscales_in_the_op(cls):
    model = make_model()
    ref_model = make_model()
    opt = cls(model.parameters(), lr=0.01)
    ref_opt = cls(ref_model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = batches(1)[0]

    # a finite step equals an unscaled plain step
    scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    torch.nn.functional.mse_loss(ref_model(x), y).backward()
    ref_opt.step()
    assert_models_close(model, ref_model, rtol=1e-6)

    # a non-finite gradient: nothing moves, no step is counted
    before = copy.deepcopy(model.state_dict())
    state_before = copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    scaler.scale(torch.nn.functional.mse_loss(model(x), y) * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    for pid, st in state_before["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                assert torch.equal(opt.state_dict()["state"][pid][k], v)
    assert scaler.get_scale() == 512.0


def test_a_skipped_first_step_leaves_no_garbage_momentum():
    """GradScaler skips the very first step (inf): the momentum buffer must not hold garbage, and
    the next finite step equals a first step of plain SGD."""
    model, ref_model = make_model(), make_model()
    opt = fk.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    x, y = batches(1)[0]
    scaler.scale(torch.nn.functional.mse_loss(model(x), y) * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    for p in model.parameters():
        buf = opt.state[p].get("momentum_buffer")
        assert buf is None or torch.equal(buf, torch.zeros_like(p))
    opt.zero_grad()
    scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
    scaler.step(opt)
    torch.nn.functional.mse_loss(ref_model(x), y).backward()
    ref_opt.step()
    assert_models_close(model, ref_model)
