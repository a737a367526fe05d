"""Every streaming kernel of the Triton backend compiles to 128-bit vector loads and stores for
sm_90 (issue 10), checked on a machine without a GPU: tests/backends/triton_ptx.py compiles
each op's main kernel, with the arguments the op passes, in a subprocess without the
interpreter, and reports its PTX's global memory instructions.

Full tiles of BLOCK = 1024 elements over 4 warps give each thread 8 consecutive elements per
stream: two ``ld.global.v4.b32`` in fp32, one in bf16 (8 bf16 in 16 bytes). The counts below
are exact, so a stream that falls back to scalar accesses fails the test.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flatmin_kernels.backends import available_backends

if "triton" not in available_backends():
    pytest.skip("the triton backend is not available here", allow_module_level=True)

from .triton_ptx import CANNOT_COMPILE, STREAMING  # noqa: E402

PER_STREAM = {"fp32": 2, "bf16": 1}  # 128-bit accesses per stream per tile and thread


@pytest.fixture(scope="module")
def ptx():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when it is unset
    run = subprocess.run([sys.executable, "-m", "tests.backends.triton_ptx"], cwd=Path(__file__).parents[2],
                         env=env, capture_output=True, text=True, timeout=1200)
    if run.returncode == CANNOT_COMPILE:
        pytest.skip(run.stdout.strip())
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize("dtype", list(PER_STREAM))
@pytest.mark.parametrize("op", list(STREAMING))
def test_streaming_kernel_compiles_to_vector_accesses(ptx, op, dtype):
    _, reads, writes = STREAMING[op]
    found = ptx[f"{op}/{dtype}"]
    vector_loads = found["ld"].get("ld.global.v4.b32", 0)
    vector_stores = found["st"].get("st.global.v4.b32", 0)
    assert vector_loads == reads * PER_STREAM[dtype], f"{op} ({dtype}) loads: {found['ld']}"
    assert vector_stores == writes * PER_STREAM[dtype], f"{op} ({dtype}) stores: {found['st']}"


def test_every_kernel_compiles_for_sm90_in_its_widest_variant(ptx):
    """The conformance tests run the kernels in the interpreter; this compiles the paths they
    cover (GC row classes, permuted noise, device scalars, every optional list) for a GPU."""
    assert ptx["compiled"] == [
        "sumsq/_partials_kernel", "sumsq/_finish_kernel", "dot/_partials_kernel", "dot/_finish_kernel",
        "axpby_/_axpby_kernel", "axpby_/_finish_kernel", "perturb_/_perturb_kernel", "noise_/_noise_kernel",
        "philox/_philox_kernel", "step_sgd_/_sgd_kernel", "step_adam_/_adam_kernel",
        "step_adam_/_advance_steps_kernel", "centralize_/_centralize_kernel",
    ]


def test_a_misaligned_table_compiles_to_scalar_loads(ptx):
    """The control: offsets that are not multiples of 16 elements drop the alignment hints."""
    found = ptx["sumsq/fp32/misaligned"]
    assert not any(".v" in instruction for instruction in found["ld"]), found["ld"]
    assert found["ld"].get("ld.global.b32", 0) > 0
