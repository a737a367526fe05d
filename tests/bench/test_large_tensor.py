"""A tensor of more than 2^31 elements (bf16, 2^31 + 1000) through the fused ops on CUDA.

Offsets must be 64-bit: a kernel that wraps at 2^31 would skip the tail or write it over the
head. Each op is checked against torch on sampled regions: the head, the region across 2^31,
the tail, and one in the middle. Run by bench/gpu_check.sh (marked gpu: skipped without CUDA).
"""
import pytest
import torch

import flatmin_kernels as fk
from flatmin_kernels import functional as F

pytestmark = pytest.mark.gpu

N = 2**31 + 1000
REGIONS = [slice(0, 4096), slice(2**31 - 2048, N), slice(2**30, 2**30 + 4096)]  # head, across 2^31 + tail, middle
BACKENDS = [b for b in ("triton", "cpp", "torch") if b in fk.available_backends()]


@pytest.fixture(scope="module", autouse=True)
def enough_memory():
    free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0
    if free < 24 * 2**30:
        pytest.skip(f"needs 24 GiB of free GPU memory for four 4 GiB tensors, {free / 2**30:.0f} GiB free")


def filled(value, tail=None):
    t = torch.full((N,), value, dtype=torch.bfloat16, device="cuda")
    if tail is not None:
        t[2**31:] = tail  # the elements a 32-bit offset cannot reach
    return t


def samples(t):
    return [t[r].float().clone() for r in REGIONS]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sumsq_reaches_the_tail(backend):
    x = filled(0.01, tail=100.0)
    expected = sum((x[i:i + 2**28].double() ** 2).sum() for i in range(0, N, 2**28))
    got = F.sumsq([x], backend=backend)
    torch.testing.assert_close(got.double(), expected, rtol=1e-3, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_axpby_updates_every_region_once(backend):
    y, x = filled(1.0), filled(0.5, tail=2.0)
    before_y, before_x = samples(y), samples(x)
    F.axpby_([y], [x], 0.5, 2.0, backend=backend)
    torch.cuda.synchronize()
    for got, y0, x0 in zip(samples(y), before_y, before_x):
        torch.testing.assert_close(got, (0.5 * y0 + 2.0 * x0).bfloat16().float(), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_updates_the_tail(backend):
    p, g = filled(1.0), filled(0.1, tail=-0.3)
    m, v = filled(0.0), filled(0.0)
    steps = [torch.zeros((), device="cuda")]
    p0, g0 = samples(p), samples(g)
    lr, wd, b1, b2, eps = 0.1, 0.01, 0.9, 0.999, 1e-8
    F.adamw_([p], [g], [m], [v], None, steps, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, backend=backend)
    torch.cuda.synchronize()
    for got, w, grad in zip(samples(p), p0, g0):
        m1, v1 = (1 - b1) * grad, (1 - b2) * grad * grad
        expected = w * (1 - lr * wd) - lr * (m1 / (1 - b1)) / ((v1 / (1 - b2)).sqrt() + eps)
        torch.testing.assert_close(got, expected.bfloat16().float(), rtol=0, atol=2**-7)
    assert float(steps[0]) == 1.0
