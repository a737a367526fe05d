"""flatmin_kernels.functional: the public API's names and signatures (the version promise), its
input validation (an error naming the list and index, nothing changed), and its semantics against
torch.optim's functional forms and the reference."""
import inspect

import pytest
import torch
from torch.optim.adam import adam as torch_adam
from torch.optim.sgd import sgd as torch_sgd

import flatmin_kernels.functional as F
from flatmin_kernels.backends import torch_backend

from .backends_under_test import CPU_BACKENDS as BACKENDS

P, K = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
E = inspect.Parameter.empty
_UPDATE_SCALARS = [("centralize", K, None), ("backups", K, None), ("grad_scale", K, None), ("found_inf", K, None),
                   ("backend", K, "auto")]
_ADAM = [("params", P, E), ("grads", P, E), ("exp_avgs", P, E), ("exp_avg_sqs", P, E), ("max_exp_avg_sqs", P, E),
         ("state_steps", P, E), ("lr", K, E), ("beta1", K, 0.9), ("beta2", K, 0.999), ("eps", K, 1e-8)]

# Version 1.0 of the API: (parameter, kind, default) of every public function. A change here is a
# major version unless it only appends keyword arguments with defaults.
API = {
    "sumsq": [("tensors", P, E), ("weights", K, None), ("centralize", K, None), ("backend", K, "auto")],
    "global_norm": [("tensors", P, E), ("weights", K, None), ("centralize", K, None), ("backend", K, "auto")],
    "dot": [("xs", P, E), ("ys", P, E), ("backend", K, "auto")],
    "centralize_": [("tensors", P, E), ("centralize", K, "gc"), ("backend", K, "auto")],
    "axpby_": [("ys", P, E), ("xs", P, E), ("a", P, E), ("b", P, E), ("backend", K, "auto")],
    "perturb_": [("params", P, E), ("directions", P, E), ("scale", P, E), ("backups", K, None), ("base", K, None),
                 ("centralize", K, None), ("adaptive", K, False), ("found_inf", K, None), ("backend", K, "auto")],
    "sam_perturb_": [("params", P, E), ("grads", P, E), ("rho", K, E), ("adaptive", K, False),
                     ("centralize", K, None), ("eps", K, 1e-12), ("backups", K, None), ("backend", K, "auto")],
    "restore_": [("params", P, E), ("backups", P, E), ("backend", K, "auto")],
    "noise_": [("params", P, E), ("coef", P, E), ("seed", K, E), ("step", K, E), ("sample", K, 0),
               ("offsets", K, None), ("base", K, None), ("found_inf", K, None), ("backend", K, "auto")],
    "sgd_": [("params", P, E), ("grads", P, E), ("momentum_buffers", P, E), ("lr", K, E), ("weight_decay", K, 0.0),
             ("momentum", K, 0.0), ("dampening", K, 0.0), ("nesterov", K, False), ("maximize", K, False)]
            + _UPDATE_SCALARS,
    "adam_": _ADAM + [("weight_decay", K, 0.0), ("amsgrad", K, False), ("maximize", K, False),
                      ("decoupled_weight_decay", K, False)] + _UPDATE_SCALARS,
    "adamw_": _ADAM + [("weight_decay", K, 1e-2), ("amsgrad", K, False), ("maximize", K, False)] + _UPDATE_SCALARS,
}


def test_the_public_names_and_version():
    assert F.API_VERSION == "1.0"
    assert sorted(F.__all__) == sorted(["API_VERSION"] + list(API))


@pytest.mark.parametrize("name", list(API))
def test_signatures_are_pinned(name):
    params = inspect.signature(getattr(F, name)).parameters.values()
    assert [(p.name, p.kind, p.default) for p in params] == API[name]
    assert getattr(F, name).__doc__, f"{name} is documented"


# ----------------------------------------------------------------------------- validation


def _lists(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]


@pytest.mark.parametrize("bad,message", [
    (lambda g: g[:1], r"grads has 1 tensors but params has 2"),
    (lambda g: [g[0], torch.zeros(6)], r"grads\[1\] has shape \(6,\) but params\[1\] has shape \(5,\)"),
    (lambda g: [g[0], torch.zeros(5, device="meta")], r"grads\[1\] is on meta but params\[1\] is on cpu"),
    (lambda g: [g[0].to(torch.int64), g[1]], r"grads\[0\] has dtype torch.int64; .* floating-point"),
    (lambda g: [g[0].to_sparse(), g[1]], r"grads\[0\] is a sparse tensor"),
    (lambda g: [g[0], torch.zeros(5, dtype=torch.complex64)], r"grads\[1\] is complex"),
    (lambda g: (x for x in g), r"grads must be a list or tuple of tensors"),
])
def test_bad_input_names_the_list_and_index_and_changes_nothing(bad, message):
    params, grads = _lists(), _lists(1)
    before = [p.clone() for p in params]
    bufs = [None, None]
    with pytest.raises((ValueError, TypeError), match=message):
        F.sgd_(params, bad(grads), bufs, lr=0.1, momentum=0.9)
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and bufs == [None, None]


def test_a_scalar_on_another_device_is_refused():
    with pytest.raises(ValueError, match=r"lr is on meta; a tensor scalar must be on the tensors' device \(cpu\)"):
        F.sgd_(_lists(), _lists(1), None, lr=torch.tensor(0.1, device="meta"))


# ----------------------------------------------------------------------------- semantics


def _mixed(seed):
    """fp32, bf16 and fp64 tensors in one list: three buckets."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 4, generator=gen), torch.randn(7, generator=gen).to(torch.bfloat16),
            torch.randn(3, 3, generator=gen, dtype=torch.float64)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_matches_torch_and_creates_buffers_like_torch(backend):
    ps, ref = _mixed(0), _mixed(0)
    bufs, ref_bufs = [None] * 3, [None] * 3
    for step in range(4):
        grads = _mixed(10 + step)
        F.sgd_(ps, grads, bufs, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2, backend=backend)
        torch_sgd(ref, grads, ref_bufs, weight_decay=1e-2, momentum=0.9, lr=0.1, dampening=0.1, nesterov=False,
                  maximize=False)
    for a, b in zip(ps + bufs, ref + ref_bufs):
        # bf16: torch rounds every intermediate to bf16, flatmin once from fp32: a few bf16 ulps apart
        tol = 4e-2 if a.dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_matches_torch(backend, decoupled):
    ps, ref = _mixed(0)[::2], _mixed(0)[::2]  # fp32 and fp64 (torch's adam keeps the param dtype)
    state = [[torch.zeros_like(p) for p in ps] for _ in range(3)] + [[torch.zeros(()) for _ in ps]]
    ref_state = [[torch.zeros_like(p) for p in ps] for _ in range(3)] + [[torch.zeros(()) for _ in ps]]
    fn = F.adamw_ if decoupled else F.adam_
    for step in range(5):
        grads = _mixed(20 + step)[::2]
        fn(ps, grads, state[0], state[1], state[2], state[3], lr=1e-2, weight_decay=0.1, amsgrad=True,
           backend=backend)
        torch_adam(ref, grads, ref_state[0], ref_state[1], ref_state[2], ref_state[3], amsgrad=True, beta1=0.9,
                   beta2=0.999, lr=1e-2, weight_decay=0.1, eps=1e-8, maximize=False,
                   decoupled_weight_decay=decoupled)
    for a, b in zip(ps, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert all(s.item() == 5 for s in state[3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_skipped_update_puts_the_parameters_back_to_the_backups(backend):
    ps, backups = _lists(), _lists(5)
    bufs = [torch.ones_like(p) for p in ps]
    F.sgd_(ps, _lists(1), bufs, lr=0.1, momentum=0.9, backups=backups, found_inf=torch.ones(()), backend=backend)
    assert all(torch.equal(p, b) for p, b in zip(ps, backups))
    assert all(torch.equal(b, torch.ones_like(b)) for b in bufs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sam_perturb_moves_by_rho_and_keeps_the_backup(backend):
    ps, grads = _mixed(0)[::2], _mixed(1)[::2]
    before = [p.clone() for p in ps]
    backups = [torch.empty_like(p) for p in ps]
    found_inf = F.sam_perturb_(ps, grads, rho=0.05, backups=backups, backend=backend)
    assert found_inf.item() == 0.0 and all(torch.equal(b, p) for b, p in zip(backups, before))
    moved = torch.cat([(p - b).double().reshape(-1) for p, b in zip(ps, before)]).norm()
    assert abs(moved.item() - 0.05) < 1e-6
    F.restore_(ps, backups, backend=backend)
    assert all(torch.equal(p, b) for p, b in zip(ps, before))


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_default_offsets_index_the_concatenated_list(backend):
    ps = [torch.zeros(3), torch.zeros(2, 2), torch.zeros(5)]
    F.noise_(ps, 1.0, seed=11, step=2, sample=1, backend=backend)
    want = torch_backend.normals(12, seed=11, step=2, sample=1, offset=0)
    torch.testing.assert_close(torch.cat([p.reshape(-1) for p in ps]), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_host_reads_with_device_scalars(backend, monkeypatch):
    ps, grads = _lists(), _lists(1)
    bufs = [torch.zeros_like(p) for p in ps]
    args = dict(lr=torch.tensor(0.1), momentum=0.9, grad_scale=torch.tensor(2.0), found_inf=torch.zeros(()))

    def refuse(self, *a, **k):
        raise AssertionError("a device value was read on the host")

    for attr in ("item", "__bool__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, attr, refuse)
    F.sgd_(ps, grads, bufs, backend=backend, **args)
    F.sam_perturb_(ps, grads, rho=torch.tensor(0.05), backend=backend)
    F.global_norm(grads, backend=backend)
