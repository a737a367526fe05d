"""Every fused backend's ops against the torch reference, on the lists of op_cases.

A backend joins these tests by being available (flatmin_kernels.available_backends()); on a
machine without CUDA the Triton backend runs under the interpreter. The reference itself is
checked against the oracles in test_torch_backend.py.
"""
import pytest
import torch

from flatmin_kernels.backends import available_backends, get_backend
from flatmin_kernels.backends import torch_backend as ref

from .op_cases import DTYPES, SHAPES, assert_lists_close, clone_list, gc_flags, make_list

FUSED = [name for name in available_backends() if name != "torch"]
if not FUSED:
    pytest.skip("no fused backend is available here", allow_module_level=True)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _device_ok(backend, device):
    if not backend.supports(torch.device(device)):
        pytest.skip(f"{backend.name} does not run on {device}")


@pytest.fixture(params=FUSED)
def backend(request):
    return get_backend(request.param)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


CASES = list(SHAPES)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["plain", "gc", "adaptive_gc"])
def test_sumsq(backend, device, case, dtype, mode):
    _device_ok(backend, device)
    xs = make_list(case, dtype, device)
    ws = make_list(case, dtype, device, seed=1) if mode == "adaptive_gc" else None
    flags = gc_flags(xs) if mode != "plain" else None
    got = backend.sumsq(xs, weights=ws, centralize=flags)
    want = ref.sumsq(xs, weights=ws, centralize=flags)
    assert got.dtype == torch.float32 and got.shape == (len(xs),)
    torch.testing.assert_close(got.cpu(), want.cpu(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dot(backend, device, case, dtype):
    _device_ok(backend, device)
    xs, ys = make_list(case, dtype, device), make_list(case, dtype, device, seed=1)
    torch.testing.assert_close(backend.dot(xs, ys).cpu(), ref.dot(xs, ys).cpu(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["save", "base_adaptive_gc", "tensor_scale", "found_inf"])
def test_perturb(backend, device, case, dtype, variant):
    _device_ok(backend, device)
    params, dirs = make_list(case, dtype, device), make_list(case, dtype, device, seed=1)
    base = make_list(case, dtype, device, seed=2) if variant == "base_adaptive_gc" else None
    kwargs = dict(
        base=base,
        adaptive=variant == "base_adaptive_gc",
        centralize=gc_flags(params) if variant == "base_adaptive_gc" else None,
        found_inf=torch.ones((), device=device) if variant == "found_inf" else None,
    )
    scale = torch.tensor(0.37, device=device) if variant == "tensor_scale" else 0.37
    got, want = clone_list(params), clone_list(params)
    got_save = [torch.full_like(p, float("nan")) for p in params] if variant == "save" else None
    want_save = clone_list(got_save) if got_save else None
    backend.perturb_(got, dirs, scale, save_to=got_save, **kwargs)
    ref.perturb_(want, dirs, scale, save_to=want_save, **kwargs)
    assert_lists_close(got, want)
    if variant == "save":
        for s, p in zip(got_save, params):
            assert torch.equal(s, p), "the backup must be a bit-exact copy"
    if variant == "found_inf":
        for g, p in zip(got, params):
            assert torch.equal(g, p), "found_inf must leave params untouched"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_centralize(backend, device, case, dtype):
    _device_ok(backend, device)
    xs = make_list(case, dtype, device)
    got, want = clone_list(xs), clone_list(xs)
    backend.centralize_(got, gc_flags(xs))
    ref.centralize_(want, gc_flags(xs))
    assert_lists_close(got, want)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a", [0, 0.5, "tensor"])
def test_axpby(backend, device, case, dtype, a):
    _device_ok(backend, device)
    xs = make_list(case, dtype, device)
    ys = make_list(case, torch.float32, device, seed=1)  # GAM keeps fp32 buffers beside low-precision grads
    if a == 0:
        for y in ys:
            y.fill_(float("nan"))  # a == 0 must not read y
    a_val = torch.tensor(-0.25, device=device) if a == "tensor" else a
    got, want = clone_list(ys), clone_list(ys)
    backend.axpby_(got, xs, a_val, 1.5)
    ref.axpby_(want, xs, a_val, 1.5)
    assert_lists_close(got, want)


@pytest.mark.parametrize("offset", [0, 5, 2**32 - 3])
def test_philox_bits(backend, device, offset):
    _device_ok(backend, device)
    kw = dict(seed=0x1234_5678_9ABC_DEF0, step=7, sample=3, offset=offset, device=device)
    got = backend.philox(1000, **kw)
    want = ref.philox(1000, **kw)
    assert got.dtype == torch.int64
    assert torch.equal(got.cpu(), want.cpu())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("from_base", [False, True])
def test_noise(backend, device, case, dtype, from_base):
    _device_ok(backend, device)
    params = make_list(case, dtype, device)
    base = make_list(case, dtype, device, seed=1) if from_base else None
    offsets, total = [], 0
    for p in params:
        offsets.append(total)
        total += p.numel()
    kw = dict(seed=42, step=3, sample=1, offsets=offsets, base=base)
    got, want = clone_list(params), clone_list(params)
    backend.noise_(got, 0.01, **kw)
    ref.noise_(want, 0.01, **kw)
    assert_lists_close(got, want)
    # the normals themselves, to 1e-6
    zeros = [torch.zeros(p.shape, device=device) for p in params]
    got_n, want_n = clone_list(zeros), clone_list(zeros)
    backend.noise_(got_n, 1.0, seed=42, step=3, sample=1, offsets=offsets)
    ref.noise_(want_n, 1.0, seed=42, step=3, sample=1, offsets=offsets)
    for a, b in zip(got_n, want_n):
        torch.testing.assert_close(a.cpu(), b.cpu(), atol=1e-6, rtol=1e-6)


SGD_VARIANTS = {
    "plain": dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False),
    "momentum_wd": dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-2, maximize=False),
    "nesterov_max": dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-2, maximize=True),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", list(SGD_VARIANTS))
@pytest.mark.parametrize("extras", ["none", "gc_backup_init", "amp"])
def test_step_sgd(backend, device, case, dtype, variant, extras):
    _device_ok(backend, device)
    hp = SGD_VARIANTS[variant]
    params, grads = make_list(case, dtype, device), make_list(case, dtype, device, seed=1)
    bufs = make_list(case, dtype, device, seed=2) if hp["momentum"] else None
    backups = make_list(case, dtype, device, seed=3) if extras == "gc_backup_init" else None
    kwargs = dict(hp, lr=0.1, init_buffers=extras == "gc_backup_init",
                  centralize=gc_flags(params) if extras == "gc_backup_init" else None,
                  backups=backups,
                  grad_scale=torch.tensor(4.0, device=device) if extras == "amp" else None,
                  found_inf=torch.zeros((), device=device) if extras == "amp" else None)
    got = [clone_list(params), clone_list(bufs) if bufs else None]
    want = [clone_list(params), clone_list(bufs) if bufs else None]
    backend.step_sgd_(got[0], grads, got[1], **kwargs)
    ref.step_sgd_(want[0], grads, want[1], **kwargs)
    assert_lists_close(got[0], want[0])
    if bufs:
        assert_lists_close(got[1], want[1])


def _adam_lists(case, dtype, device, amsgrad):
    params, grads = make_list(case, dtype, device), make_list(case, dtype, device, seed=1)
    m = make_list(case, dtype, device, seed=2, scale=0.1)
    v = make_list(case, dtype, device, seed=3, scale=0.1, positive=True)
    vmax = [x * 1.5 for x in v] if amsgrad else None
    steps = [torch.tensor(float(3 + i % 2), device=device) for i in range(len(params))]
    return params, grads, m, v, vmax, steps


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("extras", ["none", "amsgrad_gc_backup", "max_amp", "found_inf"])
def test_step_adam(backend, device, case, dtype, decoupled, extras):
    _device_ok(backend, device)
    amsgrad = extras == "amsgrad_gc_backup"
    lists = _adam_lists(case, dtype, device, amsgrad)
    params = lists[0]
    kwargs = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.05, decoupled=decoupled,
                  amsgrad=amsgrad, maximize=extras == "max_amp",
                  centralize=gc_flags(params) if amsgrad else None,
                  backups=make_list(case, dtype, device, seed=4) if amsgrad else None,
                  grad_scale=torch.tensor(8.0, device=device) if extras == "max_amp" else None,
                  found_inf=torch.ones((), device=device) if extras == "found_inf" else None)

    def run(impl):
        p, g, m, v, vmax, steps = [clone_list(x) if x is not None else None for x in lists]
        impl.step_adam_(p, g, m, v, vmax, steps, **kwargs)
        return p, m, v, vmax, steps

    got, want = run(backend), run(ref)
    for a, b in zip(got, want):
        if a is not None:
            assert_lists_close(a, b)
    if extras == "found_inf":
        assert all(torch.equal(a, b) for a, b in zip(got[0], params))
        assert all(torch.equal(a, b) for a, b in zip(got[4], lists[5]))
