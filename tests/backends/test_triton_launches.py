"""The Triton backend launches a fixed number of kernels per op, whatever the number of tensors.

Every Triton launch goes through the kernel class's ``run`` (compiled or interpreted), so
wrapping it counts launches honestly. The wrapped ``run`` counts without executing: the
count is what is being tested (the kernels' results are tested in test_op_conformance.py),
and executing 1000 interpreted programs per op would cost CI minutes.
"""
import pytest
import torch

from flatmin_kernels.backends import available_backends

if "triton" not in available_backends():
    pytest.skip("the triton backend is not available here", allow_module_level=True)

from flatmin_kernels.backends import triton_backend as tb  # noqa: E402
from flatmin_kernels.backends.triton_backend import reduce, tables  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def launches(monkeypatch):
    counted = []
    kernel_class = type(reduce._partials_kernel)

    def counting_run(self, *args, **kwargs):
        counted.append(self.fn.__name__)

    monkeypatch.setattr(kernel_class, "run", counting_run)
    return counted


def _lists(n, k, gen):
    """k lists of n small tensors (matrices, so GC applies), alike in shape."""
    shapes = [(2, 3) if i % 2 == 0 else (5,) for i in range(n)]
    return [[torch.randn(s, generator=gen, device="cpu").to(DEVICE) for s in shapes] for _ in range(k)]


def _ops(n):
    gen = torch.Generator().manual_seed(n)
    p, g, m, v, b = _lists(n, 5, gen)
    flags = [t.dim() > 1 for t in p]
    steps = [torch.zeros((), device=DEVICE) for _ in range(n)]
    scalar = torch.tensor(0.5, device=DEVICE)
    offsets = [7 * i for i in range(n)]
    return {
        "sumsq": lambda: tb.sumsq(g, weights=p, centralize=flags),
        "dot": lambda: tb.dot(g, m),
        "perturb_": lambda: tb.perturb_(p, g, scalar, save_to=b, centralize=flags, adaptive=True,
                                        found_inf=scalar),
        "noise_": lambda: tb.noise_(p, scalar, seed=1, step=2, sample=3, offsets=offsets, base=b),
        "step_sgd_": lambda: tb.step_sgd_(p, g, m, lr=scalar, weight_decay=0.1, momentum=0.9,
                                          dampening=0.0, nesterov=True, maximize=False,
                                          centralize=flags, backups=b, grad_scale=scalar),
        "step_adam_": lambda: tb.step_adam_(p, g, m, v, None, steps, lr=0.1, beta1=0.9, beta2=0.99,
                                            eps=1e-8, weight_decay=0.1, decoupled=True,
                                            amsgrad=False, maximize=False, centralize=flags),
        "centralize_": lambda: tb.centralize_(g, flags),
        "axpby_": lambda: tb.axpby_(m, g, scalar, 2.0),
    }


# launches per op: two-stage reductions, Adam's update plus its step counters, else one
EXPECTED = {"sumsq": 2, "dot": 2, "perturb_": 1, "noise_": 1, "step_sgd_": 1, "step_adam_": 2,
            "centralize_": 1, "axpby_": 1}


@pytest.mark.parametrize("op", list(EXPECTED))
def test_launch_count_does_not_grow_with_tensor_count(op, launches):
    counts = {}
    for n in (1, 10, 1000):
        call = _ops(n)[op]
        launches.clear()
        call()
        counts[n] = len(launches)
    assert counts == {1: EXPECTED[op], 10: EXPECTED[op], 1000: EXPECTED[op]}, counts


def test_philox_is_one_launch(launches):
    tb.philox(5000, seed=3, step=0, sample=0, offset=0, device=DEVICE)
    assert launches == ["_philox_kernel"]


def test_tables_are_built_once_per_set_of_tensors(monkeypatch):
    """A repeated call reuses the device table; it does not copy a new one."""
    built = []
    real_build = tables._build
    monkeypatch.setattr(tables, "_build", lambda *a, **k: built.append(1) or real_build(*a, **k))
    gen = torch.Generator().manual_seed(0)
    (xs,) = _lists(20, 1, gen)
    tables.cache_clear()
    for _ in range(3):
        tb.dot(xs, xs)
    assert len(built) == 1
