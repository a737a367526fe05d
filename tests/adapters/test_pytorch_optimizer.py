"""pytorch_optimizer's SAM on flatmin's fused ops: same trajectory as the unpatched class, and the
library's own SAM tests pass with the adapter on (CI downloads its sdist, which ships its tests,
and points FLATMIN_PYTORCH_OPTIMIZER_SDIST at it)."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from ..backends_under_test import CPU_BACKENDS, INTERPRETED
from ..optim import models as M

try:
    import pytorch_optimizer
except ImportError:
    if os.environ.get("FLATMIN_CI"):
        raise  # CI installs it: a missing adapter peer must fail there, not skip
    pytest.skip("pytorch_optimizer is not installed", allow_module_level=True)

from flatmin_kernels.adapters import pytorch_optimizer as adapter  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
BACKENDS = [b for b in CPU_BACKENDS if b not in INTERPRETED]


def _run(net, style, base, adaptive, use_gc, steps=4):
    kwargs = dict(lr=0.1, momentum=0.9) if base is torch.optim.SGD else dict(lr=1e-2)
    opt = pytorch_optimizer.SAM(net.parameters(), base, rho=0.5 if adaptive else 0.05, adaptive=adaptive,
                                use_gc=use_gc, **kwargs)
    for batch in M.batches(steps):
        if style == "two_call":
            M.loss_of(net, batch).backward()
            opt.first_step(zero_grad=True)
            M.loss_of(net, batch).backward()
            opt.second_step(zero_grad=True)
        else:
            M.loss_of(net, batch).backward()
            opt.step(M.closure_for(net, batch, opt.zero_grad))
            opt.zero_grad()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("style", ["two_call", "closure"])
@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.AdamW], ids=["sgd", "adamw"])
@pytest.mark.parametrize("adaptive,use_gc", [(False, False), (True, False), (False, True)])
def test_trajectory_matches_the_unpatched_class(backend, style, base, adaptive, use_gc):
    ref, net = M.make_net(), M.make_net()
    _run(ref, style, base, adaptive, use_gc)
    with adapter.patched(backend):
        _run(net, style, base, adaptive, use_gc)
    M.assert_same_model(net, ref, rtol=1e-5)


def test_patch_and_unpatch():
    original = pytorch_optimizer.SAM.first_step
    with adapter.patched():
        assert adapter.is_patched() and pytorch_optimizer.SAM.first_step is adapter.first_step
    assert not adapter.is_patched() and pytorch_optimizer.SAM.first_step is original


def test_its_own_sam_tests_pass_with_the_adapter_on(tmp_path):
    sdist = os.environ.get("FLATMIN_PYTORCH_OPTIMIZER_SDIST")
    if not sdist:
        if os.environ.get("FLATMIN_CI"):
            pytest.fail("FLATMIN_PYTORCH_OPTIMIZER_SDIST is not set: .ci/run downloads the sdist")
        pytest.skip("set FLATMIN_PYTORCH_OPTIMIZER_SDIST to an extracted pytorch_optimizer sdist to run its tests")
    calls = tmp_path / "calls.txt"
    plugin_dir = pathlib.Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_dir), str(ROOT)]), FLATMIN_ADAPTER_CALLS=str(calls))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
         "-p", "flatmin_adapter_plugin", "tests/test_wrapper_optimizers.py", "-k", "TestSAM"],
        cwd=sdist, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    first, second = map(int, calls.read_text().split())
    assert first > 0 and second > 0, "the library's SAM tests did not run through the adapter"
