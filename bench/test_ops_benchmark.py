"""Every functional op per native backend on the flat-10m list (fp32, 40 MB), through pytest-benchmark.

    python -m pytest bench --benchmark-only [--benchmark-json out.json]

``extra_info`` holds each op's counted bytes, so GB/s = bytes / time.
"""
import pytest
import torch

from bench.conftest import BACKENDS, DEVICE, synced
from flatmin_kernels.bench import ops_suite, param_lists

PLIST = param_lists.get("flat-10m")


@pytest.fixture(scope="module")
def buffers():
    return ops_suite.Buffers(PLIST, torch.float32, DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ops_suite.OPS, ids=lambda op: op.name.replace(" ", "-"))
def test_op(benchmark, buffers, op, backend):
    benchmark.group = f"ops {PLIST.name} fp32"
    benchmark.extra_info.update(list=PLIST.name, backend=backend, bytes=op.accesses * 4 * PLIST.numel,
                                traffic=op.traffic)
    benchmark.pedantic(synced(lambda: op.call(buffers, backend)), rounds=3, iterations=1, warmup_rounds=1)
