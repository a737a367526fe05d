"""Every fused backend's ops against the torch reference, through contract-v2 tables, on the
lists of op_cases.

A backend joins these tests by being available (flatmin_kernels.available_backends()); on a
machine without CUDA the Triton backend runs under the interpreter. The reference itself is
checked against the oracles in test_torch_backend.py.
"""
import numpy as np
import pytest
import torch

from flatmin_kernels.backends import available_backends, get_backend
from flatmin_kernels.backends import torch_backend as ref
from flatmin_kernels.backends.contract import InvNorm, Ratio

from .op_cases import (DTYPES, SHAPES, assert_lists_close, build_table, clone_list, clone_lists, gc_flags,
                       make_list, offsets_of)

FUSED = [name for name in available_backends() if name != "torch"]
if not FUSED:
    pytest.skip("no fused backend is available here", allow_module_level=True)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
CASES = list(SHAPES)


def _device_ok(backend, device):
    if not backend.supports(torch.device(device)):
        pytest.skip(f"{backend.name} does not run on {device}")


@pytest.fixture(params=FUSED)
def backend(request):
    return get_backend(request.param)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def run_both(backend, lists, op, *args, gc=None, offsets=None, scalars=(), out_size=None, **kwargs):
    """Run ``op`` on fresh copies of ``lists`` under the backend and the reference; return both
    copies (and the ``out`` vectors when ``out_size`` is given)."""
    results = []
    for impl in (backend, ref):
        copies = clone_lists(lists)
        table = build_table(impl, copies, gc=gc, offsets=offsets, scalars=scalars)
        kw = dict(kwargs)
        out = None
        if out_size is not None:
            out = torch.full((out_size,), 0.5, dtype=torch.float32, device=lists["param"][0].device)
            kw["out"] = out
        getattr(impl, op)(table, *args, **kw)
        results.append((copies, out))
    return results


def _close_scalars(got, want, dtype, indices):
    # fp32 sums of up to ~10^4 terms in different orders: agree to a few ulp of the total
    for i in indices:
        torch.testing.assert_close(got[i].cpu(), want[i].cpu(), rtol=2e-5, atol=1e-5, msg=lambda m: f"out[{i}]: {m}")


# ----------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["plain", "gc", "adaptive_gc"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_sumsq(backend, device, case, dtype, mode, accumulate):
    _device_ok(backend, device)
    xs = make_list(case, dtype, device)
    lists = {"param": make_list(case, dtype, device, seed=1), "x": xs}
    (_, got), (_, want) = run_both(
        backend, lists, "sumsq", "x", weights="param" if mode == "adaptive_gc" else None,
        centralize=mode != "plain", gc=gc_flags(xs), out_size=4, index=1, accumulate=accumulate,
        epilogue=InvNorm(eps=1e-12, inv=2, inf=3))
    assert got.dtype == torch.float32 and got[0].item() == 0.5, "only out[index] and the epilogue's slots change"
    _close_scalars(got, want, dtype, [1, 2, 3])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dot(backend, device, case, dtype):
    _device_ok(backend, device)
    lists = {"param": make_list(case, dtype, device), "y": make_list(case, dtype, device, seed=1)}
    (_, got), (_, want) = run_both(backend, lists, "dot", "param", "y", out_size=2, index=0)
    _close_scalars(got, want, dtype, [0, 1])


@pytest.mark.parametrize("values", [[float("inf")], [float("nan")], [3e38, 3e38]])
def test_epilogue_flags_a_non_finite_sum(backend, device, values):
    _device_ok(backend, device)
    lists = {"param": [torch.tensor(values, device=device)]}
    (_, got), (_, want) = run_both(backend, lists, "sumsq", "param", out_size=3, index=0,
                                   epilogue=InvNorm(eps=1e-12, inv=1, inf=2))
    assert got[2].item() == 1.0 == want[2].item()


# ----------------------------------------------------------------------------- element-wise


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["save_copy", "base_adaptive_gc", "tensor_scale", "pair_scale_minus",
                                     "found_inf"])
def test_perturb(backend, device, case, dtype, variant):
    _device_ok(backend, device)
    params = make_list(case, dtype, device)
    lists = {"param": params, "d": make_list(case, dtype, device, seed=1),
             "base": make_list(case, dtype, device, seed=2), "minus": make_list(case, dtype, device, seed=5),
             "save": [torch.full_like(p, float("nan")) for p in params],
             "dcopy": [torch.full_like(p, float("nan")) for p in params]}
    scale = {"tensor_scale": torch.tensor([0.37], device=device),
             "pair_scale_minus": (0.5, torch.tensor([0.74], device=device))}.get(variant, 0.37)
    kwargs = dict(
        base="base" if variant == "base_adaptive_gc" else None,
        minus="minus" if variant == "pair_scale_minus" else None,
        save_to="save" if variant in ("save_copy", "found_inf") else None,
        copy_d_to="dcopy" if variant in ("save_copy", "found_inf") else None,
        adaptive=variant == "base_adaptive_gc",
        centralize=variant == "base_adaptive_gc",
        found_inf=torch.ones(1, device=device) if variant == "found_inf" else None,
    )
    (got, _), (want, _) = run_both(backend, lists, "perturb_", "param", "d", scale, gc=gc_flags(params), **kwargs)
    assert_lists_close(got["param"], want["param"])
    if kwargs["save_to"]:
        for s, p in zip(got["save"], params):
            assert torch.equal(s, p), "the backup must be a bit-exact copy"
        for c, d in zip(got["dcopy"], lists["d"]):
            assert torch.equal(c, d), "copy_d_to must copy the direction exactly"
    if variant == "found_inf":
        for g, p in zip(got["param"], params):
            assert torch.equal(g, p), "found_inf must leave params untouched"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_centralize(backend, device, case, dtype):
    _device_ok(backend, device)
    xs = make_list(case, dtype, device)
    (got, _), (want, _) = run_both(backend, {"param": xs}, "centralize_", "param", gc=gc_flags(xs))
    assert_lists_close(got["param"], want["param"])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a", [0, 0.5, "tensor"])
@pytest.mark.parametrize("reduce", [None, "x", "x_minus_weighted", "y", "y_dot"])
def test_axpby(backend, device, case, dtype, a, reduce):
    _device_ok(backend, device)
    xs = make_list(case, dtype, device)
    ys = make_list(case, torch.float32, device, seed=1)  # GAM keeps fp32 buffers beside low-precision grads
    if a == 0:
        for y in ys:
            y.fill_(float("nan"))  # a == 0 must not read y
    lists = {"param": make_list(case, dtype, device, seed=3), "y": ys, "x": xs,
             "z": make_list(case, torch.float32, device, seed=2)}
    a_val = torch.tensor([-0.25], device=device) if a == "tensor" else a
    kwargs = {}
    if reduce is not None:
        kwargs = dict(reduce=reduce[0], out_size=4, index=1, accumulate=True,
                      z="z" if reduce in ("x_minus_weighted", "y_dot") else None,
                      weights="param" if reduce == "x_minus_weighted" else None)
        if reduce == "y_dot":
            kwargs["epilogue"] = Ratio(eps=1e-12, gamma=0.03, coef=3, inf=0, inf_accumulate=True)
    (got, got_out), (want, want_out) = run_both(backend, lists, "axpby_", "y", "x", a_val, 1.5, **kwargs)
    assert_lists_close(got["y"], want["y"])
    if reduce is not None:
        _close_scalars(got_out, want_out, dtype, [0, 1, 2, 3])


@pytest.mark.parametrize("zero", [np.float64(0.0), np.float32(0.0), np.int64(0), 0.0])
def test_axpby_with_any_real_zero_does_not_read_y(backend, device, zero):
    """The contract's "a is the number 0" is one predicate for every backend (numpy scalars too)."""
    _device_ok(backend, device)
    xs = make_list(CASES[0], torch.float32, device)
    ys = [torch.full_like(x, float("nan")) for x in xs]
    (got, _), (want, _) = run_both(backend, {"param": xs, "y": ys, "x": xs}, "axpby_", "y", "x", zero, 1.5)
    assert_lists_close(got["y"], want["y"])
    assert all(torch.equal(y, 1.5 * x) for y, x in zip(got["y"], xs))


def test_philox_offsets_cross_the_low_word(backend, device):
    _device_ok(backend, device)
    for offset in (0, 5, 2**32 - 3):
        kw = dict(seed=0x1234_5678_9ABC_DEF0, step=7, sample=3, offset=offset, device=device)
        got = backend.philox(1000, **kw)
        assert got.dtype == torch.int64
        assert torch.equal(got.cpu(), ref.philox(1000, **kw).cpu())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["plain", "from_base", "odd_offsets_tensor_step"])
def test_noise(backend, device, case, dtype, variant):
    _device_ok(backend, device)
    params = make_list(case, dtype, device)
    # odd offsets start tensors in the middle of a Philox call (lane != 0)
    offsets = offsets_of(params, start=2**32 + 3 if variant == "odd_offsets_tensor_step" else 0)
    step = torch.tensor([3], dtype=torch.int64, device=device) if variant == "odd_offsets_tensor_step" else 3
    lists = {"param": params, "base": make_list(case, dtype, device, seed=1)}
    (got, _), (want, _) = run_both(backend, lists, "noise_", "param", 0.01, offsets=offsets, seed=42, step=step,
                                   sample=1, base="base" if variant == "from_base" else None)
    assert_lists_close(got["param"], want["param"])
    # the normals themselves, to 1e-6
    zeros = {"param": [torch.zeros(p.shape, device=device) for p in params]}
    (got_n, _), (want_n, _) = run_both(backend, zeros, "noise_", "param", 1.0, offsets=offsets, seed=42,
                                       step=step, sample=1)
    for a, b in zip(got_n["param"], want_n["param"]):
        torch.testing.assert_close(a.cpu(), b.cpu(), atol=1e-6, rtol=1e-6)


def test_noise_skipped_on_found_inf(backend, device):
    _device_ok(backend, device)
    params = make_list("odd", torch.float32, device)
    (got, _), _ = run_both(backend, {"param": params}, "noise_", "param", 1.0, offsets=offsets_of(params),
                           seed=1, step=0, sample=0, found_inf=torch.ones(1, device=device))
    assert all(torch.equal(a, b) for a, b in zip(got["param"], params))


# ----------------------------------------------------------------------------- base updates

SGD_VARIANTS = {
    "plain": dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False),
    "momentum_wd": dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-2, maximize=False),
    "nesterov_max": dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-2, maximize=True),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", list(SGD_VARIANTS))
@pytest.mark.parametrize("extras", ["none", "gc_backup_init", "amp_combined", "skip_restores"])
def test_step_sgd(backend, device, case, dtype, variant, extras):
    _device_ok(backend, device)
    hp = SGD_VARIANTS[variant]
    params = make_list(case, dtype, device)
    lists = {"param": params, "g": make_list(case, dtype, device, seed=1),
             "buf": make_list(case, dtype, device, seed=2) if hp["momentum"] else None,
             "backup": make_list(case, dtype, device, seed=3), "g2": make_list(case, dtype, device, seed=4)}
    kwargs = dict(hp, lr=torch.tensor([0.1], device=device) if extras == "amp_combined" else 0.1,
                  init_buffers=extras == "gc_backup_init", centralize=extras == "gc_backup_init",
                  backup="backup" if extras in ("gc_backup_init", "skip_restores") else None,
                  g2="g2" if extras == "amp_combined" else None,
                  g_coef=(2.0, torch.tensor([0.75], device=device)) if extras == "amp_combined" else 1.0,
                  g2_coef=-0.03 if extras == "amp_combined" else 1.0,
                  grad_scale=torch.tensor([4.0], device=device) if extras == "amp_combined" else None,
                  found_inf=torch.ones(1, device=device) if extras == "skip_restores" else None)
    (got, _), (want, _) = run_both(backend, lists, "step_sgd_", "param", "g", "buf" if hp["momentum"] else None,
                                   gc=gc_flags(params), **kwargs)
    assert_lists_close(got["param"], want["param"])
    if hp["momentum"]:
        assert_lists_close(got["buf"], want["buf"])
    if extras == "skip_restores":
        assert all(torch.equal(a, b) for a, b in zip(got["param"], lists["backup"]))
        if hp["momentum"]:
            assert all(torch.equal(a, b) for a, b in zip(got["buf"], lists["buf"]))


def _adam_lists(case, dtype, device):
    params = make_list(case, dtype, device)
    return {"param": params, "g": make_list(case, dtype, device, seed=1),
            "m": make_list(case, dtype, device, seed=2, scale=0.1),
            "v": make_list(case, dtype, device, seed=3, scale=0.1, positive=True),
            "vmax": [x.abs() * 1.5 for x in make_list(case, dtype, device, seed=3, scale=0.1, positive=True)],
            "step": [torch.tensor([float(3 + i % 2)], device=device) for i in range(len(params))],
            "backup": make_list(case, dtype, device, seed=4), "g2": make_list(case, dtype, device, seed=5)}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("extras", ["none", "amsgrad_gc_backup", "max_amp_combined", "skip_restores"])
def test_step_adam(backend, device, case, dtype, decoupled, extras):
    _device_ok(backend, device)
    lists = _adam_lists(case, dtype, device)
    amsgrad = extras == "amsgrad_gc_backup"
    combined = extras == "max_amp_combined"
    kwargs = dict(lr=torch.tensor([1e-2], device=device) if combined else 1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                  weight_decay=0.05, decoupled=decoupled, amsgrad=amsgrad, maximize=combined,
                  centralize=amsgrad, backup="backup" if extras in ("amsgrad_gc_backup", "skip_restores") else None,
                  g2="g2" if combined else None,
                  g_coef=(1.0, torch.tensor([1.03], device=device)) if combined else 1.0,
                  g2_coef=-0.03 if combined else 1.0,
                  grad_scale=torch.tensor([8.0], device=device) if combined else None,
                  found_inf=torch.ones(1, device=device) if extras == "skip_restores" else None)
    (got, _), (want, _) = run_both(backend, lists, "step_adam_", "param", "g", "m", "v", "vmax" if amsgrad else None,
                                   "step", gc=gc_flags(lists["param"]), scalars=("step",), **kwargs)
    for name in ("param", "m", "v", "step") + (("vmax",) if amsgrad else ()):
        assert_lists_close(got[name], want[name])
    if extras == "skip_restores":
        for name, expected in (("param", "backup"), ("m", "m"), ("v", "v"), ("step", "step")):
            assert all(torch.equal(a, b) for a, b in zip(got[name], lists[expected])), name


# ----------------------------------------------------------------------------- tables


def test_refresh_follows_reallocated_gradients(backend, device):
    """set_to_none + a new backward: the same table reads the new gradients."""
    _device_ok(backend, device)
    params = make_list("conv", torch.float32, device)
    outs = []
    for impl in (backend, ref):
        ps = clone_list(params)
        table = build_table(impl, {"param": ps}, grads=make_list("conv", torch.float32, device, seed=1))
        for p, g in zip(ps, make_list("conv", torch.float32, device, seed=2)):
            p.grad = g  # new tensors, new storage
        table.refresh()
        out = torch.zeros(1, device=device)
        impl.sumsq(table, "grad", out=out)
        outs.append(out)
    want = sum(float((g.double() ** 2).sum()) for g in make_list("conv", torch.float32, device, seed=2))
    torch.testing.assert_close(outs[0].double().cpu(), torch.tensor([want], dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(outs[0].cpu(), outs[1].cpu(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("change", ["none_grad", "param_dtype"])
def test_refresh_raises_stale_table(backend, device, change):
    from flatmin_kernels.backends.contract import StaleTable

    _device_ok(backend, device)
    params = make_list("conv", torch.float32, device)
    table = build_table(backend, {"param": params}, grads=make_list("conv", torch.float32, device, seed=1))
    if change == "none_grad":
        params[1].grad = None
    else:  # what module.to(torch.float16) does to a parameter under the optimizer
        params[1].data = params[1].data.to(torch.float16)
    with pytest.raises(StaleTable):
        table.refresh()


def test_bind_refuses_a_mismatched_list_naming_the_index(backend, device):
    _device_ok(backend, device)
    params = make_list("conv", torch.float32, device)
    table = backend.Table(params)
    bad = clone_list(params)
    bad[2] = torch.zeros(bad[2].numel() + 1, device=device)
    with pytest.raises(ValueError, match=r"exp_avg\[2\]"):
        table.bind("exp_avg", bad)
