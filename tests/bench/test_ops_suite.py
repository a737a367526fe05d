"""The ops table covers the whole functional API, with each op's minimal traffic."""
import torch

from flatmin_kernels import functional
from flatmin_kernels.bench import machine, ops_suite, param_lists


def test_every_functional_op_is_benchmarked():
    benchmarked = {op.name.split()[0] for op in ops_suite.OPS}
    assert benchmarked == set(functional.__all__) - {"API_VERSION"}


def test_counted_bytes_per_element():
    accesses = {op.name: op.accesses for op in ops_suite.OPS}
    assert accesses["adamw_"] * 4 == 28  # read p, g, m, v; write p, m, v
    assert accesses["sumsq"] == 1 and accesses["perturb_ backups"] == 4 and accesses["sam_perturb_"] == 5


def test_every_op_runs_on_every_backend_here():
    plist = param_lists.get("tiny-100")
    bufs = ops_suite.Buffers(plist, torch.float32, "cpu")
    backends = [name for name, why in machine.native_backends(torch.device("cpu")).items() if why is None]
    assert "torch" in backends
    for op in ops_suite.OPS:
        for backend in backends:
            op.call(bufs, backend)
    assert all(torch.isfinite(t).all() for t in bufs.p + bufs.m + bufs.v)
