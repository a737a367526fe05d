"""fk.SGD / fk.Adam / fk.AdamW accept what torch.optim accepts and compute what it computes.

Tensors no fused kernel serves (fp64, complex, views with gaps, meta, sparse gradients) take a
correct path: the torch reference in their own precision, or torch's own SGD for sparse
gradients. Each case runs against torch.optim on the same parameters and gradients.
"""
import copy
import io
import pickle

import pytest
import torch

import flatmin_kernels as fk

from ..backends_under_test import CPU_BACKENDS as BACKENDS
from . import models as M
from .models import assert_relative_close

PAIRS = [
    (fk.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-2)),
    (fk.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    (fk.AdamW, torch.optim.AdamW, dict(lr=1e-2)),
]
IDS = [cls.__name__ for cls, _, _ in PAIRS]


def _params(kind, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if kind == "fp64":
        return [torch.nn.Parameter(torch.randn(5, 4, generator=gen, dtype=torch.float64)),
                torch.nn.Parameter(torch.randn(7, generator=gen, dtype=torch.float64))]
    if kind == "complex":
        return [torch.nn.Parameter(torch.randn(5, 4, generator=gen, dtype=torch.complex64)),
                torch.nn.Parameter(torch.randn(3, generator=gen))]
    if kind == "view_with_gaps":  # a parameter that is a strided view of a larger storage
        return [torch.nn.Parameter(torch.randn(6, 8, generator=gen)[:, ::2]), torch.nn.Parameter(torch.randn(3, generator=gen))]
    if kind == "transposed":  # dense but not contiguous
        return [torch.nn.Parameter(torch.randn(8, 5, generator=gen).t()), torch.nn.Parameter(torch.randn(3, generator=gen))]
    raise ValueError(kind)


def _grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    out = []
    for p in params:
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64 if p.dtype == torch.float64 else torch.float32)
        if p.is_complex():
            g = torch.complex(g, torch.randn(p.shape, generator=gen))
        out.append(g.to(p.dtype))
    return out


def _run(cls, params, kwargs, steps=20):
    opt = cls(params, **kwargs)
    for step in range(steps):
        for p, g in zip(params, _grads(params, step)):
            p.grad = torch.empty_like(p).copy_(g)  # autograd's layout: the param's when it is dense
        opt.step()
    return opt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["fp64", "complex", "view_with_gaps", "transposed"])
@pytest.mark.parametrize("ours,theirs,kwargs", PAIRS, ids=IDS)
def test_parameter_kinds_match_torch_optim(ours, theirs, kwargs, kind, backend):
    mine, ref = _params(kind), _params(kind)
    _run(ours, mine, dict(kwargs, backend=backend))
    _run(theirs, ref, kwargs)
    # fp64 is computed in fp64: agreement far below fp32 rounding
    rtol = 1e-12 if kind == "fp64" else 1e-6
    for i, (a, b) in enumerate(zip(mine, ref)):
        assert a.dtype == b.dtype and a.stride() == b.stride()
        assert_relative_close(torch.view_as_real(a) if a.is_complex() else a,
                              torch.view_as_real(b) if b.is_complex() else b, rtol, f"param {i} ({kind})")


@pytest.mark.parametrize("lr_shape", [(1,), (1, 1)])
@pytest.mark.parametrize("ours,theirs,kwargs", PAIRS, ids=IDS)
def test_one_element_tensor_lr(ours, theirs, kwargs, lr_shape):
    mine, ref = _params("transposed"), _params("transposed")
    lr = torch.full(lr_shape, kwargs["lr"])
    _run(ours, mine, dict(kwargs, lr=lr.clone()), steps=5)
    _run(theirs, ref, dict(kwargs, lr=lr.clone()), steps=5)
    for a, b in zip(mine, ref):
        assert_relative_close(a, b, 1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sparse_gradients_take_torchs_sgd(momentum):
    def run(cls):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(10, 3, sparse=True)
        fc = torch.nn.Linear(3, 2)
        opt = cls(list(emb.parameters()) + list(fc.parameters()), lr=0.1, momentum=momentum)
        for step in range(5):
            opt.zero_grad()
            idx = torch.tensor([step % 10, (3 * step + 1) % 10, 7])
            fc(emb(idx)).pow(2).sum().backward()
            opt.step()
        return emb.weight.detach(), fc.weight.detach(), opt

    w, v, opt = run(fk.SGD)
    w_ref, v_ref, _ = run(torch.optim.SGD)
    assert_relative_close(w, w_ref, 1e-6)
    assert_relative_close(v, v_ref, 1e-6)


def test_adam_refuses_sparse_gradients_as_torch_does():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    before = emb.weight.detach().clone()
    opt = fk.Adam(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"does not support sparse gradients: parameter 0 of param group 0 "
                                           r"\(shape \(10, 3\)\), please consider SparseAdam instead"):
        opt.step()
    assert torch.equal(emb.weight, before) and len(opt.state) == 0


def test_sgd_without_momentum_keeps_no_state():
    params = _params("transposed")
    opt = _run(fk.SGD, params, dict(lr=0.1), steps=2)
    ref = _run(torch.optim.SGD, _params("transposed"), dict(lr=0.1), steps=2)
    assert dict(opt.state) == dict(ref.state) == {}


@pytest.mark.parametrize("ours,theirs,kwargs", PAIRS, ids=IDS)
def test_meta_parameters_step_like_torch(ours, theirs, kwargs):
    p = torch.nn.Parameter(torch.empty(4, 3, device="meta"))
    p.grad = torch.empty(4, 3, device="meta")
    opt = ours([p], **kwargs)
    opt.step()
    assert p.device.type == "meta" and set(opt.state[p]) == set(_run_meta(theirs, kwargs))


def _run_meta(cls, kwargs):
    p = torch.nn.Parameter(torch.empty(4, 3, device="meta"))
    p.grad = torch.empty(4, 3, device="meta")
    opt = cls([p], **kwargs)
    opt.step()
    return opt.state[p]


# ----------------------------------------------------------------------------- copy, pickle, torch.save


def _wrapped(net, kind):
    if kind == "AdamW":
        return fk.AdamW(net.parameters(), lr=1e-2, centralize="gc")
    if kind == "SAM":
        return fk.SAM(net.parameters(), fk.AdamW, rho=0.05, lr=1e-2, model=net)
    if kind == "GAM":
        return fk.GAM(net.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, model=net)
    return fk.NSO(net.parameters(), fk.AdamW, sigma=0.01, lr=1e-2, seed=3, model=net)


def _train(net, opt, batches):
    for batch in batches:
        M.train_step(net, opt, batch)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("kind", ["AdamW", "SAM", "GAM", "NSO"])
def test_copies_continue_like_the_original(kind, how):
    net = M.make_net()
    opt = _wrapped(net, kind)
    _train(net, opt, M.batches(2))
    if how == "deepcopy":
        net2, opt2 = copy.deepcopy((net, opt))
    elif how == "pickle":
        net2, opt2 = pickle.loads(pickle.dumps((net, opt)))
    else:
        buf = io.BytesIO()
        torch.save((net, opt), buf)
        buf.seek(0)
        net2, opt2 = torch.load(buf, weights_only=False)
    later = M.batches(3, seed=7)
    _train(net, opt, later)
    _train(net2, opt2, later)
    for (name, a), b in zip(net.named_parameters(), net2.parameters()):
        assert torch.equal(a, b), name
