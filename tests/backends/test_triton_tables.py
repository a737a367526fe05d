"""The Triton backend's cached device tables: rebuilt when a tensor's storage changes, and the
layouts they accept (dense tensors, channels_last) or refuse with a clear error."""
import pytest
import torch

from flatmin_kernels.backends import available_backends
from flatmin_kernels.backends import torch_backend as ref

if "triton" not in available_backends():
    pytest.skip("the triton backend is not available here", allow_module_level=True)

from flatmin_kernels.backends import triton_backend as tb  # noqa: E402

from .op_cases import assert_lists_close, clone_list  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(4, 6), (7,), (3, 2, 3, 3)]


def _randn(shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(DEVICE) for s in shapes]


def _sgd(impl, params, grads, bufs):
    impl.step_sgd_(params, grads, bufs, lr=0.1, weight_decay=0.01, momentum=0.9, dampening=0.0,
                   nesterov=False, maximize=False, centralize=[t.dim() > 1 for t in params])


def test_reallocated_gradients_get_a_new_table():
    """zero_grad(set_to_none=True) gives the next step new gradient tensors: the cached table
    of the old ones must not be used (it would read the old, still-alive gradients)."""
    params, bufs = _randn(SHAPES, 0), _randn(SHAPES, 1)
    want_p, want_b = clone_list(params), clone_list(bufs)
    old_grads = _randn(SHAPES, 2)
    _sgd(tb, params, old_grads, bufs)
    _sgd(ref, want_p, old_grads, want_b)
    new_grads = _randn(SHAPES, 3)  # old_grads stay alive, so the addresses differ
    _sgd(tb, params, new_grads, bufs)
    _sgd(ref, want_p, new_grads, want_b)
    assert_lists_close(params, want_p)
    assert_lists_close(bufs, want_b)


def test_channels_last_conv_weights_are_centralized_per_output_channel():
    w = _randn([(8, 3, 3, 3)], 4)[0].to(memory_format=torch.channels_last)
    assert not w.is_contiguous()
    got, want = [w.clone(memory_format=torch.preserve_format)], [w.clone()]
    tb.centralize_(got, [True])
    ref.centralize_(want, [True])
    assert_lists_close(got, want)


def test_strided_tensor_is_refused_with_its_position():
    xs = _randn([(5,), (6, 4)], 5)
    xs[1] = xs[1].t()  # a transposed view: not one dense block laid out like the others
    with pytest.raises(ValueError, match=r"needs dense tensors.*tensor 1 of xs has shape \(4, 6\)"):
        tb.dot(xs, _randn([(5,), (4, 6)], 6))


def test_reductions_are_deterministic():
    xs = _randn([(3000,), (17, 5)], 7)
    first = tb.sumsq(xs, centralize=[False, True])
    assert all(torch.equal(first, tb.sumsq(xs, centralize=[False, True])) for _ in range(3))
