"""Every steps-suite contender on tiny-1000 (host work) and flat-10m (10M parameters), fp32, through
pytest-benchmark: the optimizer's own work per iteration, the stand-in backward passes excluded
by the timer.

    python -m pytest bench --benchmark-only [--benchmark-json out.json]

The torch.compile peer is left out (it compiles for minutes); ``python -m flatmin_kernels bench``
runs it.
"""
import pytest
import torch

import bench.peers
from bench.conftest import BACKENDS, CLOCK, DEVICE, synced
from flatmin_kernels.bench import contenders as C
from flatmin_kernels.bench import param_lists
from flatmin_kernels.bench.steps_suite import Setup

LISTS = ("tiny-1000", "flat-10m")
FIELD = [c for c in C.torch_adamw() + [c for b in BACKENDS for c in C.ours(b)] + bench.peers.contenders(BACKENDS)
         if c.in_quick]


@pytest.fixture(scope="module", params=LISTS)
def plist(request):
    return param_lists.get(request.param)


@pytest.fixture(scope="module")
def presets(plist):
    return param_lists.materialize(plist, torch.float32, DEVICE, seed=1, scale=1e-3)



@pytest.mark.benchmark(timer=CLOCK.timer)
@pytest.mark.parametrize("contender", FIELD, ids=lambda c: c.name)
def test_step(benchmark, plist, presets, contender):
    if contender.unavailable:
        pytest.skip(contender.unavailable)
    setup = Setup(contender, plist, torch.float32, DEVICE, presets, torch.zeros((), device=DEVICE))
    benchmark.group = f"steps {plist.name} fp32"
    benchmark.extra_info.update(list=plist.name, method=contender.method, family=contender.family,
                                bytes_per_param_counted=contender.bytes_per_param(4))
    benchmark.pedantic(synced(lambda: setup.iteration(CLOCK)), rounds=3, iterations=1, warmup_rounds=1)
