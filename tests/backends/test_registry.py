"""The backend registry: what works here, and the package without its optional pieces."""
import subprocess
import sys

import torch

import flatmin_kernels as fk
from flatmin_kernels import backends


def test_every_available_backend_implements_the_whole_contract():
    assert "torch" in fk.available_backends()
    for name in fk.available_backends():
        module = backends.get_backend(name)
        assert backends.contract.missing_api(module) == []
        assert module.name == name


def test_auto_picks_a_backend_that_supports_the_device():
    module = backends.resolve("auto", torch.device("cpu"))
    assert module.supports(torch.device("cpu"))
    assert module.name == ("cpp" if "cpp" in fk.available_backends() else "torch")


def test_package_imports_and_steps_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, flatmin_kernels as fk\n"
        "ok, reason = fk.backend_status()['triton']\n"
        "assert not ok and 'cannot import triton' in reason, reason\n"
        "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
        "fk.SGD([p], lr=0.5).step(); assert torch.equal(p.detach(), torch.full((3,), 0.5))\n"
        "try:\n"
        "    fk.SGD([p], lr=0.5, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "backend 'triton' is not available here: cannot import triton" in out.stdout
