"""The compiled backend's own behaviour, beyond the shared conformance tests.

test_op_conformance.py checks every op on small lists; here: tensors split into several work
items (more than one chunk, GC rows longer than a chunk), results that do not depend on the
thread count, the errors for tensors the extension refuses, and the package without the
extension.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from flatmin_kernels.backends import torch_backend as ref

from .op_cases import assert_lists_close, clone_list

cpp = pytest.importorskip("flatmin_kernels.backends.cpp_backend")
if not cpp.available()[0]:
    pytest.skip(f"cpp backend not built: {cpp.available()[1]}", allow_module_level=True)

# Several 65,536-element work items per tensor: a flat tensor, GC rows of 700 (93 rows per
# item), rows longer than a whole chunk, and a tensor that ends mid-item.
BIG_SHAPES = [(200_001,), (300, 700), (2, 70_000), (70_001, 1)]


def _big(dtype=torch.float32, seed=0, positive=False):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in BIG_SHAPES:
        t = torch.randn(shape, generator=gen)
        out.append((t.abs() + 0.1 if positive else t).to(dtype))
    return out


FLAGS = [len(s) > 1 for s in BIG_SHAPES]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_multi_item_reductions(dtype):
    xs, ws = _big(dtype), _big(dtype, seed=1)
    torch.testing.assert_close(cpp.sumsq(xs, weights=ws, centralize=FLAGS),
                               ref.sumsq(xs, weights=ws, centralize=FLAGS), atol=1e-3, rtol=2e-5)
    torch.testing.assert_close(cpp.sumsq(xs), ref.sumsq(xs), atol=1e-3, rtol=2e-5)
    torch.testing.assert_close(cpp.dot(xs, ws), ref.dot(xs, ws), atol=1e-2, rtol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_multi_item_updates(dtype):
    params, grads = _big(dtype), _big(dtype, seed=1)
    m, v = _big(dtype, seed=2), _big(dtype, seed=3, positive=True)
    steps = [torch.tensor(4.0) for _ in params]
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.05, decoupled=True,
              amsgrad=False, maximize=False, centralize=FLAGS, backups=_big(dtype, seed=4))
    got = [clone_list(x) for x in (params, m, v, steps)]
    want = [clone_list(x) for x in (params, m, v, steps)]
    cpp.step_adam_(got[0], grads, got[1], got[2], None, got[3], **kw)
    ref.step_adam_(want[0], grads, want[1], want[2], None, want[3], **kw)
    for a, b in zip(got, want):
        assert_lists_close(a, b)

    got_p, want_p = clone_list(params), clone_list(params)
    got_save = [torch.empty_like(p) for p in params]
    cpp.perturb_(got_p, grads, torch.tensor(0.05), save_to=got_save, centralize=FLAGS, adaptive=True)
    ref.perturb_(want_p, grads, torch.tensor(0.05), centralize=FLAGS, adaptive=True)
    assert_lists_close(got_p, want_p)
    assert all(torch.equal(s, p) for s, p in zip(got_save, params))

    # noise on one tensor of two items whose global indices cross 2**32 (the counter's high
    # word); the python reference is slow, so only this one
    noisy = [params[3]]
    got_n, want_n = clone_list(noisy), clone_list(noisy)
    cpp.noise_(got_n, 0.1, seed=2**63 + 11, step=9, sample=2, offsets=[2**32 - 100])
    ref.noise_(want_n, 0.1, seed=2**63 + 11, step=9, sample=2, offsets=[2**32 - 100])
    assert_lists_close(got_n, want_n)


def test_channels_last_weights():
    """Dense non-contiguous layouts run in memory order; dim 0 stays outermost, so GC works."""
    def cl(seed):
        return [torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(seed))
                .to(memory_format=torch.channels_last)]
    params, grads, bufs = cl(0), cl(1), cl(2)
    assert not params[0].is_contiguous()
    # a size-1 dimension may carry any stride: (5, 1) with strides (1, 1) and (1, 5) is one layout
    x, y = torch.randn(5, 1), torch.randn(1, 5).t()
    assert x.stride() != y.stride()
    torch.testing.assert_close(cpp.dot([x], [y]), ref.dot([x], [y]))
    kw = dict(lr=0.1, weight_decay=1e-2, momentum=0.9, dampening=0.0, nesterov=True, maximize=False,
              centralize=[True])
    got, want = [clone_list(params), clone_list(bufs)], [clone_list(params), clone_list(bufs)]
    cpp.step_sgd_(got[0], grads, got[1], **kw)
    ref.step_sgd_(want[0], grads, want[1], **kw)
    assert_lists_close(got[0], want[0])
    assert_lists_close(got[1], want[1])
    torch.testing.assert_close(cpp.sumsq(grads, centralize=[True]), ref.sumsq(grads, centralize=[True]))


def test_reductions_do_not_depend_on_thread_count():
    xs = _big()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (cpp.sumsq(xs, centralize=FLAGS), cpp.dot(xs, xs))
        torch.set_num_threads(max(2, threads))
        many = (cpp.sumsq(xs, centralize=FLAGS), cpp.dot(xs, xs))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_refuses_what_it_cannot_handle():
    good = [torch.randn(4, 3)]
    with pytest.raises(RuntimeError, match="tensor 0 of tensors is not dense"):
        cpp.sumsq([torch.randn(3, 8)[:, ::2]])
    with pytest.raises(RuntimeError, match=r"tensor 0 of ys has strides \[1, 4\], the first list has \[3, 1\]"):
        cpp.dot(good, [torch.randn(3, 4).t()])
    with pytest.raises(RuntimeError, match="tensor 0 cannot be centralized in memory order"):
        cpp.centralize_([torch.randn(3, 4).t()], [True])
    with pytest.raises(RuntimeError, match="only float32, bfloat16 and float16 are supported"):
        cpp.sumsq([torch.randn(4, dtype=torch.float64)])
    with pytest.raises(RuntimeError, match="tensors mixes dtypes"):
        cpp.sumsq([torch.randn(4), torch.randn(4, dtype=torch.bfloat16)])
    with pytest.raises(RuntimeError, match="tensor 0 of ys has 5 elements, expected 12"):
        cpp.dot(good, [torch.randn(5)])
    with pytest.raises(RuntimeError, match="directions has 2 tensors, expected 1"):
        cpp.perturb_(clone_list(good), good * 2, 0.1)
    with pytest.raises(RuntimeError, match="save_to must have the params' dtype"):
        cpp.perturb_(clone_list(good), good, 0.1, save_to=[torch.empty(4, 3, dtype=torch.float16)])
    with pytest.raises(RuntimeError, match=r"steps\[0\] must be a one-element float32 tensor"):
        cpp.step_adam_(clone_list(good), good, clone_list(good), clone_list(good), None,
                       [torch.tensor(1, dtype=torch.int64)], lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                       weight_decay=0.0, decoupled=True, amsgrad=False, maximize=False)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\)"):
        cpp.philox(4, seed=-1, step=0, sample=0, offset=0)


def test_package_works_without_the_extension():
    """With _C unimportable: one warning saying why, cpp unavailable, auto falls back to torch."""
    script = textwrap.dedent("""
        import sys, warnings
        sys.modules["flatmin_kernels._C"] = None  # what an unbuilt extension looks like
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch, flatmin_kernels
            from flatmin_kernels.backends import available_backends, backend_status, resolve
            names = available_backends()
            status = backend_status()["cpp"]
            chosen = resolve("auto", torch.device("cpu")).name
        ours = [w for w in caught if "cpp backend is unavailable" in str(w.message)]
        print(len(ours), "cpp" in names, status[0], chosen, status[1], sep="|")
    """)
    env = dict(os.environ, FLATMIN_BACKEND="")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    n_warnings, listed, ok, chosen, reason = out.stdout.strip().split("|")
    assert (n_warnings, listed, ok, chosen) == ("1", "False", "False", "torch")
    assert "flatmin_kernels._C is not importable" in reason and "--no-build-isolation" in reason
