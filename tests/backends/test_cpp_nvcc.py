"""Every CUDA source of csrc/ compiles with nvcc for sm_80 and sm_90 (compile only, no GPU).

The .cu files include no torch headers, so this works wherever nvcc is, CI included; a CUDA
file that does not compile fails here even on a machine without a GPU.
"""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_there_are_cuda_sources():
    assert CUDA_SOURCES, "csrc/cuda/*.cu not found"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_compiles_for_sm80_and_sm90(source, tmp_path):
    cmd = [NVCC, "-std=c++17", "-O1", "-c", str(source), "-o", str(tmp_path / "out.o"),
           "-I", str(ROOT / "csrc" / "include"), "-DFLATMIN_WITH_CUDA", "-Werror", "all-warnings",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"nvcc failed for {source.name}:\n{result.stderr[-4000:]}"
    assert (tmp_path / "out.o").stat().st_size > 0
