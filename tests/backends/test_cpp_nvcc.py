"""The CUDA side of the cpp backend, checked without a GPU.

* Every CUDA source of csrc/ compiles with nvcc for sm_80 and sm_90 with warnings as errors (the
  .cu files include no torch headers, so this works wherever nvcc is, CI included).
* The compiled code has the shape the kernels were written for: ptxas reports no spill and no
  stack frame for any kernel, the PTX declares no local memory, and every streaming kernel moves
  data with 128-bit ``ld.global.v4`` / ``st.global.v4``.
* The binding's CUDA host path (csrc/table.cpp, csrc/bindings.cpp with FLATMIN_WITH_CUDA) compiles
  against the installed torch's headers.

These check code shape, not speed and not results: no GPU runs here. Results on a GPU come from
the ``gpu``-marked conformance tests.
"""
import pathlib
import re
import shutil
import subprocess
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc")
ARCHS = ("80", "90")

# Kernels that stream tensors (by name prefix, after demangling) and the vector access they need.
STREAMING = {
    "item_kernel<PerturbOp": ("ld.global.v4", "st.global.v4"),
    "item_kernel<SgdOp": ("ld.global.v4", "st.global.v4"),
    "item_kernel<AdamOp": ("ld.global.v4", "st.global.v4"),
    "item_kernel<SumsqOp": ("ld.global.v4",),
    "item_kernel<DotOp": ("ld.global.v4",),
    "item_kernel<AxpbyOp": ("ld.global.v4", "st.global.v4"),
    "centralize_kernel<": ("ld.global.v4", "st.global.v4"),
    "noise_kernel<": ("ld.global.v4", "st.global.v4"),
}

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def test_there_are_cuda_sources():
    assert CUDA_SOURCES, "csrc/cuda/*.cu not found"


def _demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    return dict(zip(names, out))


HOST_SOURCES = ["table.cpp", "bindings.cpp"]


def _host_compile_command(source):
    """g++ -fsyntax-only of the binding with its CUDA branches, against the installed torch."""
    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    return ["g++", "-std=c++20", "-fsyntax-only", "-DFLATMIN_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C",
            "-DTORCH_API_INCLUDE_EXTENSION_H", "-fvisibility=hidden", f"-I{ROOT / 'csrc' / 'include'}",
            f"-I{ROOT / 'csrc'}", *includes, str(ROOT / "csrc" / source)]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every compilation of this file at once (nvcc is slow, cores are few): per CUDA source, the
    finished nvcc (ptxas -v's report) and its PTX per architecture; per host source, the g++ check."""
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    running = {}
    for source in CUDA_SOURCES:
        keep = tmp_path_factory.mktemp(source.stem)
        cmd = [NVCC, "-std=c++17", "-O3", "--fmad=false", "-c", str(source), "-o", str(keep / "out.o"),
               "-I", str(ROOT / "csrc" / "include"), "-DFLATMIN_WITH_CUDA", "-Werror", "all-warnings",
               "-Xptxas", "-v", "--keep", "--keep-dir", str(keep)]
        for arch in ARCHS:
            cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        running[source.name] = (keep, cmd)
    if shutil.which("g++"):
        running.update({source: (None, _host_compile_command(source)) for source in HOST_SOURCES})
    processes = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, (_, cmd) in running.items()}
    results = {}
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=900)
        keep = running[name][0]
        ptx = {} if keep is None else {
            arch: "\n".join(p.read_text() for p in keep.glob(f"*compute_{arch}*.ptx")) for arch in ARCHS}
        results[name] = (subprocess.CompletedProcess(process.args, process.returncode, "", stderr), ptx)
    return results


@needs_nvcc
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_compiles_for_sm80_and_sm90(compiled, source):
    result, ptx = compiled[source.name]
    assert result.returncode == 0, f"nvcc failed for {source.name}:\n{result.stderr[-4000:]}"
    assert all(ptx.values()), "no PTX was kept"


def _ptxas_report(stderr):
    """{(arch, kernel): (registers, stack bytes, spill bytes)} from ptxas -v output."""
    report, key = {}, None
    for line in stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)' for 'sm_(\d+)'", line):
            key = (m[2], m[1])
            report[key] = [None, None, None]
        elif key and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                                     line)):
            report[key][1], report[key][2] = int(m[1]), int(m[2]) + int(m[3])
        elif key and (m := re.search(r"Used (\d+) registers", line)):
            report[key][0] = int(m[1])
    return report


@needs_nvcc
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_no_spills_and_no_local_memory(compiled, source):
    result, ptx = compiled[source.name]
    assert result.returncode == 0, result.stderr[-2000:]
    report = _ptxas_report(result.stderr)
    kernels = {k for _, k in report}
    assert kernels or source.name == "capture.cu", "ptxas reported no kernel"
    names = _demangle(sorted(kernels))
    bad = {f"sm_{arch} {names[k]}": r for (arch, k), r in report.items() if r[1] != 0 or r[2] != 0}
    assert not bad, f"stack frames or spills (registers, stack, spill bytes): {bad}"
    for arch, text in ptx.items():
        assert ".local" not in text, f"sm_{arch} PTX of {source.name} declares local memory"


def _entries(ptx_text):
    """{kernel name: PTX body}."""
    parts = re.split(r"\n(?=(?:\.visible )?\.entry )", ptx_text)
    return {re.search(r"\.entry (\S+)\(", p)[1]: p for p in parts if re.match(r"(?:\.visible )?\.entry ", p)}


@needs_nvcc
def test_streaming_kernels_use_128_bit_access(compiled):
    seen = set()
    for source, (result, ptx) in compiled.items():
        assert result.returncode == 0, result.stderr[-2000:]
        for arch, text in ptx.items():
            entries = _entries(text)
            names = _demangle(list(entries))
            for mangled, body in entries.items():
                name = re.sub(r"flatmin::cuda::\(anonymous namespace\)::|flatmin::cuda::|flatmin::", "",
                              names[mangled])
                name = name.removeprefix("void ")
                for prefix, needed in STREAMING.items():
                    if name.startswith(prefix):
                        seen.add(prefix)
                        for op in needed:
                            assert op in body, f"sm_{arch} {name} has no {op}"
    assert seen == set(STREAMING), f"kernels not found: {set(STREAMING) - seen}"


@needs_nvcc
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH")
@pytest.mark.parametrize("source", HOST_SOURCES)
def test_cuda_host_path_compiles(compiled, source):
    """The binding's CUDA branches (uploads, streams, events, capture checks) use device-generic
    torch headers only, so they compile against a CPU-only torch as well."""
    result, _ = compiled[source]
    assert result.returncode == 0, result.stderr[-4000:]
