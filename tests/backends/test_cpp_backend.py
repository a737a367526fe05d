"""The compiled backend's own behaviour, beyond the shared conformance tests.

test_op_conformance.py checks every op on small lists; here: tensors split into several work
items (more than one chunk, GC rows longer than a chunk), results that do not depend on the thread
count or on the CPU instruction set, the accuracy of the vectorised normals, torch.optim's
trajectories, the C++ table (no list conversion in a steady state, gradients re-allocated,
staleness), every error message, tensor subclasses refused without a crash, and the package
without the extension.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from flatmin_kernels.backends import torch_backend as ref
from flatmin_kernels.backends.contract import InvNorm, StaleTable

from .op_cases import assert_lists_close, build_table, clone_list, clone_lists, make_list, offsets_of

cpp = pytest.importorskip("flatmin_kernels.backends.cpp_backend")
if not cpp.available()[0]:
    pytest.skip(f"cpp backend not built: {cpp.available()[1]}", allow_module_level=True)
_C = cpp._C

# Several 65,536-element work items per tensor: a flat tensor, GC rows of 700 (93 rows per item),
# rows longer than a whole chunk, and a tensor that ends mid-item.
BIG_SHAPES = [(200_001,), (300, 700), (2, 70_000), (70_001, 1)]
FLAGS = [len(s) > 1 for s in BIG_SHAPES]
ISAS = [isa for isa in ("avx512", "avx2", "baseline") if _C.set_cpu_isa(isa)]
_C.set_cpu_isa(ISAS[0])


def _big(dtype=torch.float32, seed=0, positive=False):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in BIG_SHAPES:
        t = torch.randn(shape, generator=gen)
        out.append((t.abs() + 0.1 if positive else t).to(dtype))
    return out


@pytest.fixture
def isa():
    """Restores the best instruction set after a test that picks another."""
    yield
    assert _C.set_cpu_isa(ISAS[0])


def _both(lists, op, *args, gc=None, offsets=None, scalars=(), out_size=None, **kwargs):
    """(cpp result, reference result): each a dict of lists and the out vector."""
    results = []
    for impl in (cpp, ref):
        copies = clone_lists(lists)
        table = build_table(impl, copies, gc=gc, offsets=offsets, scalars=scalars)
        out = torch.zeros(out_size) if out_size else None
        getattr(impl, op)(table, *args, **(dict(kwargs, out=out) if out_size else kwargs))
        results.append((copies, out))
    return results


# ----------------------------------------------------------------------------- several work items


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_multi_item_reductions(dtype):
    lists = {"param": _big(dtype), "w": _big(dtype, seed=1)}
    (_, got), (_, want) = _both(lists, "sumsq", "param", weights="w", centralize=True, gc=FLAGS, out_size=3,
                                epilogue=InvNorm(1e-12, 1, 2))
    torch.testing.assert_close(got, want, atol=1e-3, rtol=2e-5)
    (_, got), (_, want) = _both(lists, "dot", "param", "w", out_size=1)
    torch.testing.assert_close(got, want, atol=1e-2, rtol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_multi_item_updates(dtype):
    lists = {"param": _big(dtype), "g": _big(dtype, seed=1), "m": _big(dtype, seed=2),
             "v": _big(dtype, seed=3, positive=True), "backup": _big(dtype, seed=4),
             "step": [torch.tensor([4.0]) for _ in BIG_SHAPES]}
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.05, decoupled=True, amsgrad=False,
              maximize=False, centralize=True, backup="backup")
    (got, _), (want, _) = _both(lists, "step_adam_", "param", "g", "m", "v", None, "step", gc=FLAGS,
                                scalars=("step",), **kw)
    for name in ("param", "m", "v", "step"):
        assert_lists_close(got[name], want[name])

    lists["save"] = [torch.empty_like(p) for p in lists["param"]]
    (got, _), (want, _) = _both(lists, "perturb_", "param", "g", torch.tensor([0.05]), save_to="save",
                                centralize=True, adaptive=True, gc=FLAGS, scalars=("step",))
    assert_lists_close(got["param"], want["param"])
    assert all(torch.equal(s, p) for s, p in zip(got["save"], lists["param"]))


def test_buckets_larger_than_the_caches_stream_their_outputs():
    """From 4M elements the write-only lists (a backup, weights computed from their backup) go
    out with non-temporal stores: same results."""
    shapes = [(1 << 22,), (1000, 7)]
    lists = {name: [torch.randn(s, generator=torch.Generator().manual_seed(seed)) for s in shapes]
             for seed, name in enumerate(["param", "g", "m", "backup", "save"])}
    lists["v"] = [x.abs() for x in lists["m"]]
    lists["step"] = [torch.tensor([1.0]) for _ in shapes]
    gc = [False, True]
    (got, _), (want, _) = _both(lists, "perturb_", "param", "g", 0.01, save_to="save", base="backup", gc=gc,
                                scalars=("step",), centralize=True)
    assert_lists_close(got["param"], want["param"])
    assert all(torch.equal(s, p) for s, p in zip(got["save"], lists["param"]))
    (got, _), (want, _) = _both(lists, "step_adam_", "param", "g", "m", "v", None, "step", lr=1e-3, beta1=0.9,
                                beta2=0.999, eps=1e-8, weight_decay=0.01, decoupled=True, amsgrad=False,
                                maximize=False, backup="backup", gc=gc, scalars=("step",))
    for name in ("param", "m", "v"):
        assert_lists_close(got[name], want[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_noise_follows_logical_indices_in_permuted_layouts(dtype):
    """channels_last weights and transposed matrices get the noise of their logical (row-major)
    elements, as the reference does, whatever their memory order."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(8, 5, 3, 3, generator=gen).to(dtype).to(memory_format=torch.channels_last),
              torch.randn(70, 9, generator=gen).to(dtype).t(), torch.randn(13, generator=gen).to(dtype)]
    lists = {"param": params, "base": [p.clone() for p in params]}  # clone keeps the layout
    (got, _), (want, _) = _both(lists, "noise_", "param", 0.5, offsets=offsets_of(params, start=1), seed=3, step=2,
                                sample=1, base="base")
    assert_lists_close(got["param"], want["param"])
    assert got["param"][0].stride() == params[0].stride()


def test_rebinding_a_grad_slot_replaces_it():
    params = [torch.randn(3)]
    params[0].grad = torch.ones(3)
    table = cpp.Table(params)
    table.bind_grads("g")
    table.bind("g", [torch.full((3,), 2.0)])
    out = torch.zeros(1)
    cpp.sumsq(table, "g", out=out)
    assert out.item() == 12.0


def test_noise_of_several_items_crossing_the_counters_high_word():
    """Global indices crossing 2**32 (the counter's high word), an offset that is not a multiple
    of 4, and a tensor of several items; the python reference is slow, so only one tensor."""
    lists = {"param": [_big()[3]]}
    (got, _), (want, _) = _both(lists, "noise_", "param", 0.1, seed=2**63 + 11, step=9, sample=2,
                                offsets=[2**32 - 101])
    assert_lists_close(got["param"], want["param"])


def test_channels_last_weights():
    """Dense non-contiguous layouts run in memory order; dim 0 stays outermost, so GC works."""
    def cl(seed):
        return [torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(seed))
                .to(memory_format=torch.channels_last)]
    lists = {"param": cl(0), "g": cl(1), "buf": cl(2)}
    assert not lists["param"][0].is_contiguous()
    kw = dict(lr=0.1, weight_decay=1e-2, momentum=0.9, dampening=0.0, nesterov=True, maximize=False,
              centralize=True)
    (got, _), (want, _) = _both(lists, "step_sgd_", "param", "g", "buf", gc=[True], **kw)
    assert_lists_close(got["param"], want["param"])
    assert_lists_close(got["buf"], want["buf"])


# ----------------------------------------------------------------------------- determinism


def test_reductions_do_not_depend_on_thread_count():
    table = cpp.Table(_big(), gc_rows=FLAGS)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            out = torch.zeros(2)
            cpp.sumsq(table, "param", centralize=True, out=out, index=0)
            cpp.dot(table, "param", "param", out=out, index=1)
            outs.append(out)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


def test_every_instruction_set_computes_the_same_bits(isa):
    """The loops are compiled once per instruction set without fused multiply-adds, and sums use
    16 fixed lanes: AVX-512, AVX2 and the baseline agree to the bit (those this CPU runs)."""
    lists = {"param": _big(torch.bfloat16), "g": _big(torch.bfloat16, seed=1), "m": _big(seed=2),
             "v": _big(seed=3, positive=True), "step": [torch.tensor([2.0]) for _ in BIG_SHAPES]}
    results = []
    for name in ISAS:
        assert _C.set_cpu_isa(name) and _C.cpu_isa() == name
        copies = clone_lists(lists)
        table = build_table(cpp, copies, gc=FLAGS, offsets=offsets_of(copies["param"], start=3),
                            scalars=("step",))
        out = torch.zeros(1)
        cpp.sumsq(table, "g", centralize=True, out=out)
        cpp.step_adam_(table, "param", "g", "m", "v", None, "step", lr=(0.5, out), beta1=0.9, beta2=0.99, eps=1e-8,
                       weight_decay=0.1, decoupled=False, amsgrad=False, maximize=False, centralize=True)
        cpp.noise_(table, "param", 0.01, seed=5, step=1, sample=0)
        results.append([out] + copies["param"] + copies["m"] + copies["v"])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_vectorised_normals_match_the_reference(isa):
    """64K Philox calls (256K normals) from a counter near 2**32: within 1e-6 of the reference's
    normals (torch's log/sin/cos) at every instruction set, and the same bits at every one."""
    n, first = 1 << 16, 2**32 - 1000
    want = ref.normals(4 * n, seed=0x1234_5678_9ABC_DEF0, step=7, sample=3, offset=4 * first)
    got = []
    for name in ISAS:
        assert _C.set_cpu_isa(name)
        got.append(_C.cpu_normals(first, n, 0x1234_5678_9ABC_DEF0, 7, 3))
        torch.testing.assert_close(got[-1], want, atol=1e-6, rtol=1e-6)
    assert all(torch.equal(got[0], g) for g in got[1:])


# ----------------------------------------------------------------------------- torch.optim trajectories


def _trajectory(make_optim, run_cpp, steps=50):
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 33), (33,), (7, 3, 3)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]
    theirs = [p.clone().requires_grad_() for p in params]
    opt = make_optim(theirs)
    ours = clone_list(params)
    state = run_cpp(ours)
    for step_grads in grads:
        for p, g in zip(theirs, step_grads):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(ours, step_grads):
            p.grad = g.clone()  # a new gradient tensor every step, as after zero_grad(set_to_none=True)
        state()
    for a, b in zip(ours, theirs):  # torch.optim rounds some steps with fused multiply-adds
        assert float((a - b.detach()).norm() / b.detach().norm()) < 1e-6


def test_adamw_follows_torch_optim_for_50_steps():
    def run(params):
        table = cpp.Table(params)
        table.bind("m", [torch.zeros_like(p) for p in params])
        table.bind("v", [torch.zeros_like(p) for p in params])
        table.bind_scalars("step", [torch.zeros(1) for _ in params])
        table.bind_grads()

        def step():
            table.refresh()
            cpp.step_adam_(table, "param", "grad", "m", "v", None, "step", lr=1e-2, beta1=0.9, beta2=0.999,
                           eps=1e-8, weight_decay=0.01, decoupled=True, amsgrad=False, maximize=False)
        return step
    _trajectory(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, foreach=False), run)


def test_sgd_nesterov_follows_torch_optim_for_50_steps():
    def run(params):
        table = cpp.Table(params)
        table.bind("buf", [torch.zeros_like(p) for p in params])
        table.bind_grads()
        first = [True]

        def step():
            table.refresh()
            cpp.step_sgd_(table, "param", "grad", "buf", lr=0.01, weight_decay=1e-3, momentum=0.9, dampening=0.0,
                          nesterov=True, maximize=False, init_buffers=first[0])
            first[0] = False
        return step
    _trajectory(lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3,
                                           foreach=False), run)


# ----------------------------------------------------------------------------- the table


def _adam_table(n=50):
    params = [torch.randn(16) for _ in range(n)]
    for p in params:
        p.grad = torch.randn(16)
    table = cpp.Table(params, offsets=offsets_of(params))
    table.bind("m", [torch.zeros(16) for _ in params])
    table.bind("v", [torch.zeros(16) for _ in params])
    table.bind_scalars("step", [torch.zeros(1) for _ in params])
    table.bind_grads()
    table.refresh()
    return params, table


def test_steady_state_calls_convert_no_list_and_build_nothing():
    """The ops take slot names: a call reads every address in C++, so repeated steps with
    re-allocated gradients convert no Python list and rebuild nothing; only the addresses move."""
    params, table = _adam_table()
    before = table.stats()
    assert before["builds"] == 1 and before["list_conversions"] == 4  # the constructor and three binds
    out = torch.zeros(3)
    for _ in range(5):
        for p in params:
            p.grad = torch.randn(16)  # new storage
        table.refresh()
        cpp.sumsq(table, "grad", out=out, epilogue=InvNorm(1e-12, 1, 2))
        cpp.step_adam_(table, "param", "grad", "m", "v", None, "step", lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                       weight_decay=0.0, decoupled=True, amsgrad=False, maximize=False)
    after = table.stats()
    assert (after["builds"], after["list_conversions"], after["uploads"]) == (1, 4, before["uploads"])
    assert after["address_changes"] > before["address_changes"], "the new gradients were read"


def test_a_table_follows_reallocated_gradients_and_param_data():
    params, table = _adam_table(3)
    grads = [torch.randn(16) for _ in params]
    for p, g in zip(params, grads):
        p.grad = g
    out = torch.zeros(1)
    cpp.sumsq(table, "grad", out=out)  # read at the op, no refresh needed
    torch.testing.assert_close(out, torch.stack([(g * g).sum() for g in grads]).sum().reshape(1))
    params[1].data = torch.full((16,), 2.0)  # same layout, new storage
    cpp.sumsq(table, "param", out=out)
    assert out.item() == pytest.approx(sum(float((p * p).sum()) for p in params), rel=1e-6)


@pytest.mark.parametrize("change, message", [
    ("none_grad", r"grad\[1\] is None \(parameter 1 has no gradient\)"),
    ("param_dtype", r"param\[1\] \(16 elements of Half on cpu .*\) does not match tensor 1 \(16 elements of Float"),
    ("grad_shape", r"grad\[2\] \(32 elements of Float"),
    ("grad_dtypes", r"grad mixes dtypes \(grad\[1\] is BFloat16, grad\[0\] is Float\)"),
])
def test_staleness_raises_before_anything_is_written(change, message):
    params, table = _adam_table(3)
    if change == "none_grad":
        params[1].grad = None
    elif change == "param_dtype":
        params[1].data = params[1].data.to(torch.float16)  # what module.half() does under the optimizer
    elif change == "grad_shape":
        params[2].grad.data = torch.randn(32)  # (.grad = refuses it; autograd's own hooks may not)
    else:
        params[1].grad.data = params[1].grad.data.to(torch.bfloat16)
    m_before = clone_list(table.get("m"))
    with pytest.raises(StaleTable, match=message) as raised:
        table.refresh()
    assert type(raised.value) is StaleTable, "the contract's own class, translated from C++"
    with pytest.raises(StaleTable, match=message):
        cpp.step_adam_(table, "param", "grad", "m", "v", None, "step", lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                       weight_decay=0.0, decoupled=True, amsgrad=False, maximize=False)
    assert all(torch.equal(a, b) for a, b in zip(table.get("m"), m_before)), "nothing is written"
    assert all(s.item() == 0.0 for s in table.get("step"))


def test_a_slot_named_twice_is_read_as_the_reference_reads_it():
    """A list read while a list of the same slot is written reads the old values (a private copy
    on the CPU), as the reference's out-of-place math does."""
    params = make_list("conv")
    lists = {"param": params, "y": make_list("conv", seed=1), "g": make_list("conv", seed=2)}
    (got, _), (want, _) = _both(lists, "axpby_", "y", "y", 0.5, 2.0)
    assert_lists_close(got["y"], want["y"])
    (got, _), (want, _) = _both(lists, "step_sgd_", "param", "g", None, lr=0.1, weight_decay=0.1, momentum=0.0,
                                dampening=0.0, nesterov=False, maximize=False, backup="param")
    assert_lists_close(got["param"], want["param"])


def test_bind_and_ops_refuse_bad_arguments_with_clear_errors():
    params = [torch.randn(4, 3), torch.randn(5), torch.randn(2, 2)]
    table = cpp.Table(params, gc_rows=[True, False, True])
    bad = clone_list(params)
    bad[2] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"exp_avg\[2\] \(5 elements of Float on cpu with sizes \[5\] and strides "
                                         r"\[1\]\) does not match tensor 2 \(4 elements"):
        table.bind("exp_avg", bad)
    with pytest.raises(ValueError, match=r"^exp_avg has 2 tensors for 3$"):
        table.bind("exp_avg", params[:2])
    with pytest.raises(ValueError, match=r"exp_avg mixes dtypes \(exp_avg\[1\] is BFloat16, exp_avg\[0\] is Float\)"):
        table.bind("exp_avg", [params[0], params[1].bfloat16(), params[2]])
    with pytest.raises(ValueError, match=r"exp_avg\[0\] \(.*strides \[1, 4\]\) does not match tensor 0 .*strides "
                                         r"\[3, 1\]"):
        table.bind("exp_avg", [torch.randn(3, 4).t(), params[1], params[2]])
    with pytest.raises(ValueError, match=r"exp_avg\[1\] has dtype Double; the cpp backend serves float32, "
                                         r"bfloat16 and float16"):
        table.bind("exp_avg", [params[0], params[1].double(), params[2]])
    with pytest.raises(ValueError, match=r"step\[1\] must be a one-element float32 tensor on cpu"):
        table.bind_scalars("step", [torch.zeros(1), torch.zeros(1, dtype=torch.int64), torch.zeros(1)])
    with pytest.raises(ValueError, match=r"tensors\[0\] is not dense \(a view with gaps or overlaps\)"):
        cpp.Table([torch.randn(3, 8)[:, ::2]])
    with pytest.raises(ValueError, match=r"tensors\[0\] cannot be centralized in memory order: dim 0 is not its "
                                         r"outermost dimension"):
        cpp.Table([torch.randn(3, 4).t()], gc_rows=[True])
    with pytest.raises(ValueError, match=r"^gc_rows has 1 flags for 2 tensors$"):
        cpp.Table(params[:2], gc_rows=[True])
    with pytest.raises(ValueError, match=r"tensors mixes dtypes"):
        cpp.Table([torch.randn(2), torch.randn(2, dtype=torch.bfloat16)])

    out = torch.zeros(2)
    with pytest.raises(ValueError, match=r"no slot named 'nope' is bound to this table"):
        cpp.sumsq(table, "nope", out=out)
    with pytest.raises(ValueError, match=r"out must be a 1-D float32 tensor on cpu"):
        cpp.sumsq(table, "param", out=torch.zeros(2, dtype=torch.float64))
    with pytest.raises(IndexError, match=r"index 2 is out of range for out of size 2"):
        cpp.sumsq(table, "param", out=out, index=2)
    with pytest.raises(ValueError, match=r"scale must be a number, a one-element float32 tensor on cpu, or a "
                                         r"\(number, tensor\) pair"):
        cpp.perturb_(table, "param", "param", torch.zeros(2), save_to=None)
    with pytest.raises(ValueError, match=r"found_inf must be None or a one-element float32 tensor on cpu"):
        cpp.perturb_(table, "param", "param", 0.1, found_inf=torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"noise_ needs a table built with offsets"):
        cpp.noise_(table, "param", 0.1, seed=1, step=0, sample=0)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\)"):
        cpp.philox(4, seed=-1, step=0, sample=0, offset=0)
    with pytest.raises(ValueError, match=r"step must be a python int or a one-element int64 tensor on cpu"):
        cpp.noise_(cpp.Table(params, offsets=[0, 12, 17]), "param", 0.1, seed=1, step=torch.zeros(1), sample=0)
    with pytest.raises(ValueError, match=r"steps must name a slot bound with bind_scalars"):
        cpp.step_adam_(table, "param", "param", "param", "param", None, "param", lr=0.1, beta1=0.9, beta2=0.99,
                       eps=1e-8, weight_decay=0.0, decoupled=True, amsgrad=False, maximize=False)
    table.bind("m", clone_list(params))
    with pytest.raises(ValueError, match=r"slot 'm' is passed for two lists the op writes"):
        cpp.step_sgd_(table, "m", "param", "m", lr=0.1, weight_decay=0.0, momentum=0.9, dampening=0.0,
                      nesterov=False, maximize=False)
    with pytest.raises(ValueError, match=r"reduce must be None, 'x' or 'y', got 'z'"):
        cpp.axpby_(table, "m", "param", 1.0, 1.0, reduce="z", out=out)


class _Wrapper(torch.Tensor):
    """A __torch_dispatch__ wrapper subclass (like DTensor): no storage of its own."""

    @staticmethod
    def __new__(cls, inner):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, device=inner.device)

    def __init__(self, inner):
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        unwrap = lambda x: x.inner if isinstance(x, _Wrapper) else x  # noqa: E731
        return func(*[unwrap(a) for a in args], **{k: unwrap(v) for k, v in (kwargs or {}).items()})


def test_tensor_subclasses_are_refused_without_a_crash():
    plain = torch.randn(4)
    wrapped = _Wrapper(torch.randn(4))
    assert not cpp.serves(wrapped) and not cpp.serves(torch.randn(4).as_subclass(_Wrapper))
    assert cpp.serves(torch.nn.Parameter(torch.randn(4))) and cpp.serves(plain)
    with pytest.raises(ValueError, match=r"tensors\[1\] is a _Wrapper; the cpp backend takes torch.Tensor and "
                                         r"nn.Parameter only \(no tensor subclasses\)"):
        cpp.Table([plain, wrapped])
    table = cpp.Table([plain])
    with pytest.raises(ValueError, match=r"m\[0\] is a _Wrapper"):
        table.bind("m", [wrapped])
    # a gradient is read in C++, where only the dispatch keys tell: refused as stale, not read
    plain.grad = _Wrapper(torch.randn(4))
    table.bind_grads()
    with pytest.raises(StaleTable, match=r"grad\[0\] is a tensor subclass with __torch_dispatch__"):
        table.refresh()
    plain.grad = torch.randn(4).to_sparse()
    with pytest.raises(StaleTable, match=r"grad\[0\] is not a strided tensor"):
        cpp.sumsq(table, "grad", out=torch.zeros(1))


def test_serves():
    assert all(cpp.serves(torch.randn(3, 4, dtype=d)) for d in (torch.float32, torch.bfloat16, torch.float16))
    assert not cpp.serves(torch.randn(3, dtype=torch.float64))
    assert not cpp.serves(torch.randn(3, 8)[:, ::2]) and not cpp.serves(torch.empty(3, device="meta"))
    assert cpp.serves(torch.randn(3, 4).t()) and not cpp.serves(torch.randn(3, 4).t(), gc=True)
    weight = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
    assert cpp.serves(weight, gc=True)
    assert not cpp.serves(torch.randn(4, 4).to_sparse())


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_cuda_table_uploads_only_when_addresses_move():
    params = [torch.randn(1000, device="cuda") for _ in range(3)]
    for p in params:
        p.grad = torch.randn_like(p)
    table = cpp.Table(params)
    table.bind_grads()
    table.refresh()
    out = torch.zeros(1, device="cuda")
    uploads = table.stats()["uploads"]
    for _ in range(3):
        cpp.sumsq(table, "grad", out=out)
    assert table.stats()["uploads"] == uploads
    for p in params:
        p.grad = torch.randn_like(p)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # another stream: waits for the upload, records its buffers
        cpp.sumsq(table, "grad", out=out)
    torch.cuda.synchronize()
    assert table.stats()["uploads"] == uploads + 1
    torch.testing.assert_close(out, torch.stack([(p.grad ** 2).sum() for p in params]).sum().reshape(1))


@pytest.mark.gpu
def test_cuda_capture_refuses_to_rebuild_a_table():
    params = [torch.randn(1000, device="cuda")]
    params[0].grad = torch.randn_like(params[0])
    table = cpp.Table(params)
    table.bind_grads()
    table.refresh()
    out = torch.zeros(1, device="cuda")
    params[0].grad = torch.randn_like(params[0])
    torch.cuda.synchronize()
    with pytest.raises(RuntimeError, match="a table would be rebuilt during CUDA graph capture"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            cpp.sumsq(table, "grad", out=out)


# ----------------------------------------------------------------------------- without the extension


def test_package_works_without_the_extension():
    """With _C unimportable: one warning saying why, cpp unavailable, auto falls back to torch."""
    script = textwrap.dedent("""
        import sys, warnings
        sys.modules["flatmin_kernels._C"] = None  # what an unbuilt extension looks like
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch, flatmin_kernels
            from flatmin_kernels.backends import available_backends, backend_status, resolve
            from flatmin_kernels.backends import cpp_backend
            names = available_backends()
            status = backend_status()["cpp"]
            chosen = resolve("auto", torch.device("cpu")).name
        ours = [w for w in caught if "cpp backend is unavailable" in str(w.message)]
        try:
            cpp_backend.Table([torch.zeros(1)])
        except RuntimeError as exc:
            table_error = str(exc)
        print(len(ours), "cpp" in names, status[0], chosen, status[1], table_error, sep="|")
    """)
    env = dict(os.environ, FLATMIN_BACKEND="")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    n_warnings, listed, ok, chosen, reason, table_error = out.stdout.strip().split("|")
    assert (n_warnings, listed, ok, chosen) == ("1", "False", "False", "torch")
    assert "flatmin_kernels._C is not importable" in reason and "--no-build-isolation" in reason
    assert table_error.startswith("the cpp backend is unavailable: flatmin_kernels._C is not importable")
