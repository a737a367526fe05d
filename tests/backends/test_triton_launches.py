"""The Triton backend launches a fixed number of kernels per op, whatever the number of tensors
or of their GC row lengths, and its ops do no per-tensor work on the host.

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
from flatmin_kernels.backends.contract import InvNorm, Ratio  # noqa: E402
from flatmin_kernels.backends.triton_backend import reduce  # noqa: E402

from .op_cases import offsets_of  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# GC rows of four classes (4, 64, 1024 columns and longer than a tile) and plain vectors
SHAPES = [(2, 3), (5,), (4, 40), (3, 2000), (6, 1000)]


@pytest.fixture
def launches(monkeypatch):
    counted = []
    kernel_class = type(reduce._partials_kernel)

    def counting_run(self, *args, **kwargs):
        counted.append(self.fn.__name__)

    monkeypatch.setattr(kernel_class, "run", counting_run)
    return counted


def _table(n):
    """A table of n tensors (cycling through SHAPES, GC on the matrices) with every slot an op
    below uses, gradients included."""
    gen = torch.Generator().manual_seed(n)

    def tensors():
        return [torch.randn(SHAPES[i % len(SHAPES)], generator=gen).to(DEVICE) for i in range(n)]

    params = tensors()
    table = tb.Table(params, gc_rows=[p.dim() > 1 for p in params], offsets=offsets_of(params, start=3))
    for name in ("m", "v", "b", "z"):
        table.bind(name, tensors())
    table.bind_scalars("steps", [torch.zeros(1, device=DEVICE) for _ in range(n)])
    for p, g in zip(params, tensors()):
        p.grad = g
    table.bind_grads()
    table.refresh()
    return table


def _ops(t):
    out = torch.zeros(8, device=DEVICE)
    scalar = out[:1]
    return {
        "sumsq": lambda: tb.sumsq(t, "grad", weights="param", centralize=True, out=out,
                                  epilogue=InvNorm(eps=1e-12, inv=2, inf=3)),
        "dot": lambda: tb.dot(t, "grad", "m", out=out),
        "axpby_": lambda: tb.axpby_(t, "m", "grad", scalar, 2.0),
        "axpby_reduce": lambda: tb.axpby_(t, "m", "grad", 0.5, (2.0, scalar), reduce="y", z="z", out=out, index=4,
                                          epilogue=Ratio(eps=1e-12, gamma=0.1, coef=6, inf=7)),
        "perturb_": lambda: tb.perturb_(t, "param", "grad", scalar, save_to="b", copy_d_to="z", centralize=True,
                                        adaptive=True, found_inf=scalar),
        "noise_": lambda: tb.noise_(t, "param", scalar, seed=1, step=2, sample=3, base="b"),
        "step_sgd_": lambda: tb.step_sgd_(t, "param", "grad", "m", lr=scalar, weight_decay=0.1, momentum=0.9,
                                          dampening=0.0, nesterov=True, maximize=False, centralize=True, backup="b",
                                          grad_scale=scalar, g2="z", g2_coef=-0.5),
        "step_adam_": lambda: tb.step_adam_(t, "param", "grad", "m", "v", None, "steps", lr=0.1, beta1=0.9,
                                            beta2=0.99, eps=1e-8, weight_decay=0.1, decoupled=True, amsgrad=False,
                                            maximize=False, centralize=True),
        "centralize_": lambda: tb.centralize_(t, "grad"),
    }


# launches per op: two-stage reductions (axpby's when it reduces), Adam's update plus its step
# counters, else one
EXPECTED = {"sumsq": 2, "dot": 2, "axpby_": 1, "axpby_reduce": 2, "perturb_": 1, "noise_": 1, "step_sgd_": 1,
            "step_adam_": 2, "centralize_": 1}


@pytest.mark.parametrize("op", list(EXPECTED))
def test_launch_count_does_not_grow_with_tensor_or_row_class_count(op, launches):
    counts = {}
    for n in (1, 10, 1000):
        table = _table(n)
        launches.clear()
        _ops(table)[op]()
        counts[n] = len(launches)
    assert counts == {1: EXPECTED[op], 10: EXPECTED[op], 1000: EXPECTED[op]}, counts


def test_the_largest_bucket_has_four_gc_row_classes():
    """So the launch counts above hold for a bucket of many row lengths, not just one."""
    table = _table(1000)
    assert table.block == 1024
    assert bin(table.centralized.classes).count("1") == 5, "plain items and four GC row classes"
    assert bin(table.gc_only.classes).count("1") == 4


def test_philox_is_one_launch(launches):
    tb.philox(5000, seed=3, step=0, sample=0, offset=0, device=DEVICE)
    assert launches == ["_philox_kernel"]


def test_ops_do_no_per_tensor_work_on_the_host(monkeypatch, launches):
    """No op reads a tensor's pointer or builds a table: the table holds everything."""
    table = _table(1000)
    calls = []
    real_data_ptr = torch.Tensor.data_ptr
    monkeypatch.setattr(torch.Tensor, "data_ptr", lambda self: calls.append(1) or real_data_ptr(self))
    monkeypatch.setattr(type(table), "_upload", lambda *a, **k: pytest.fail("an op uploaded a table"))
    for op in _ops(table).values():
        op()
    assert calls == []
    assert len(launches) == sum(EXPECTED.values())
